from idtoken.cli import main

raise SystemExit(main())
