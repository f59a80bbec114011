#!/usr/bin/env bash
# The resilience soak (not in CI): three replicas on PostgreSQL under load for
# SECONDS (default 180) while one is killed and restarted, one partitioned and
# healed, one reset and healed; prints how many revocations were not honoured
# within a second (must be 0). Needs what scripts/test needs (PostgreSQL).
#   scripts/soak.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres
SOAK_SECONDS="${1:-180}" exec cargo nextest run -p portcullis --test it --profile soak --run-ignored only \
    --no-capture soak_revocations_are_honoured_through_kills_and_cuts
