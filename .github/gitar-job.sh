#!/usr/bin/env bash
# One CI job for a pushed experiment branch, as three steps the workflow runs separately:
#   fetch    the remote's records and branches in (needs read access)
#   measure  every pushed commit without a verdict, in order (runs the agent's code: no credentials)
#   push     records, attempt pins and the branch out (needs write access)
# The tests in tests/scale run this same script.
#
# Environment: GITAR_BRANCH (required), GITAR_REMOTE (origin), GITAR_PYTHON (python3: the trusted
# interpreter with gitar installed), GITAR_GIT_TOKEN (optional: a token for https://github.com).
set -euo pipefail

step=${1:?usage: gitar-job.sh fetch|measure|push}
branch=${GITAR_BRANCH:?set GITAR_BRANCH to the pushed experiment branch}
remote=${GITAR_REMOTE:-origin}
python=${GITAR_PYTHON:-python3}

# -I: never import from the working directory; a pushed branch may carry a gitar/ of its own.
gitar=("$python" -I -m gitar)

with_token() {
  # The token reaches git through this process's environment only: never .git/config on disk,
  # never the measure step, where the agent's train.py runs.
  if [ -n "${GITAR_GIT_TOKEN:-}" ]; then
    local auth
    auth=$(printf 'x-access-token:%s' "$GITAR_GIT_TOKEN" | base64 | tr -d '\n')
    echo "::add-mask::$auth"
    GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0="http.https://github.com/.extraheader" \
      GIT_CONFIG_VALUE_0="AUTHORIZATION: basic $auth" "$@"
  else
    "$@"
  fi
}

case "$step" in
  fetch) with_token "${gitar[@]}" sync "$remote" --no-push ;;
  measure) env -u GITAR_GIT_TOKEN "${gitar[@]}" ci "$branch" --remote "$remote" --no-sync ;;
  push) with_token "${gitar[@]}" sync "$remote" ;;
  *) echo "gitar-job.sh: unknown step $step (fetch, measure or push)" >&2; exit 2 ;;
esac
