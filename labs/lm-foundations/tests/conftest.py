"""Put the lab's modules and labkit on the path (the tests run in the lab's own environment)."""

import sys
from pathlib import Path

LAB_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(LAB_DIR))
sys.path.insert(1, str(LAB_DIR.parents[1]))
