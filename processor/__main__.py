from processor.app.cli import main

raise SystemExit(main())
