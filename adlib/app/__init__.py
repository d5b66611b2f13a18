"""The application layer: what a user runs, on top of the study layer and the papers.

- ``cli``: ``python -m adlib COMMAND`` (one module per command: ``add_arguments`` and ``main``);
- ``run``: ``adlib run MODEL``, one model on one dataset;
- ``reproduce``: ``adlib reproduce``, the notebook collection through papermill;
- ``report``: ``REPORT.md`` and the static site from what the notebooks wrote;
- ``notebooks``: finding the collection's notebooks and reading their declared outputs.

The folder tree reads as the data path: data -> backbones/blocks -> models -> engine -> study -> papers -> app.
Nothing below this package imports from it.
"""
