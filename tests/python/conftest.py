# Lets the tests import mla_ref.py beside them.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
