from adlib.cli import main

raise SystemExit(main())
