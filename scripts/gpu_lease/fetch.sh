#!/bin/bash
# Join the parts a lease call brought back (its files_at folder) into runs/.
set -euo pipefail
cd "$(dirname "$0")/../.."
for first in "$1"/*.tgz.part-aa; do
  cat "${first%aa}"* | tar xzf - -C runs/
  echo "runs/$(basename "${first%.tgz.part-aa}")"
done
