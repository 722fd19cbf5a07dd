#!/usr/bin/env bash
# The test suite (CPU). Installs what it needs first when missing.
set -euo pipefail
cd "$(dirname "$0")"
python -c "import avvp, torch, pandas, tqdm, sklearn, pytest, av, selenium" 2>/dev/null || \
  python -m pip install -q -r requirements.txt -e ".[extract,test]"
python -m pytest -q "$@"
