"""benchmarks/gpu_ladmim.py: the GPU check's code path, run on the CPU with tiny sizes (--dry-run)."""
import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_ladmim.py"


def test_dry_run_trains_both_stages_and_scores(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_ladmim", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert module.main(["--dry-run", "--images", "4", "--json", str(tmp_path / "r.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["device"] == "cpu" and record["images"] == 4
    assert set(record["losses"]) == {"tokenizer", "mim"} and record["finite"]
    assert record["features_and_tokenizer_epoch_s"] > 0 and record["mim_epoch_s"] > 0
    assert module.PAPER["image_size"] == 224 and module.PAPER["backbone"] == "pdn"
    assert json.loads(capsys.readouterr().out)["tokens"] == 36
