import sys

from docproc.cli.commands import main

sys.exit(main())
