"""Suite-wide: nothing a test starts may reach the internet's literature services."""

import os

# `auto` would probe PubMed and Europe PMC; every server the tests start, in this
# process or as a child, searches only the local index unless a test says otherwise.
os.environ["DEEPRESEARCH_SEARCH"] = "local"
