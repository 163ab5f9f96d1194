import sys

from cnclip.cli import main

sys.exit(main())
