import sys
from pathlib import Path

# The oracle lives beside the tests (not in the package); importlib mode needs the folder on sys.path.
sys.path.insert(0, str(Path(__file__).parent))
