from stackflow_openai.cli import main

raise SystemExit(main())
