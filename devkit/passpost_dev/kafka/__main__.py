import sys

from passpost_dev.kafka.cli import main

sys.exit(main())
