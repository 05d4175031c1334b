import sys

try:
    from conformance.cli.main import main
except KeyboardInterrupt:  # Ctrl-C while it loads: ended as SIGINT ends a program, no traceback
    sys.exit(128 + 2)

sys.exit(main())
