import sys

from docproc.cli import main

sys.exit(main())
