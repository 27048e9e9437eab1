#!/usr/bin/env bash
# Undo `make demo`: remove the lab (safe to run twice, and after a crash).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/shoal lab down
