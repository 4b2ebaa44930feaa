"""On a launched script's PYTHONPATH, it runs as a user's install runs it: without torch.

torch is a test-only dependency (setup.py's ``test`` extra, for the parity tests). Where it is installed,
tensorboardX and transformers import it at start-up, 2-3 s per launched process; here ``import torch``
fails as it does where torch is not installed, so the launch tests also show the scripts do not need it.
"""

import sys

sys.modules["torch"] = None
