import sys

from silverclip.cli import entry_point

sys.exit(entry_point())
