import os

# No model hub, ever: every model in the tests comes from an installed package or is built in-test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
