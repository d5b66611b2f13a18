from adlib.app.cli import main

raise SystemExit(main())
