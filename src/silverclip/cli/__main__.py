import sys

from silverclip.cli import main

sys.exit(main())
