import sys

from tripwire.cli.main import main

sys.exit(main())
