#!/bin/sh
# deploy/ci-upgrade.sh: deploy a baton-sessiond build from any CI job.
#
#   deploy/ci-upgrade.sh -c CONFIG BIN [--canary P --bake S [--steps P1,P2,...]]
#                        [--force] [--timeout S] [--result FILE]
#
# Without --canary: `batonctl -c CONFIG upgrade BIN --json` (all at once).
# With --canary:    `batonctl -c CONFIG upgrade BIN --canary P --bake S
#                    [--steps ...] --json` (canary, bake under the health
#                    gates, grow, promote; or roll back).
# The supervisor installs BIN as a release (state_dir/releases/<version>/),
# so BIN must be readable by the supervisor's user.
#
# stdout: batonctl's one JSON result line (also written to --result FILE).
# stderr: one line saying what happened; on failure the gate and its reason
# (and a GitHub Actions ::error:: annotation when GITHUB_ACTIONS=true).
# Exit status: batonctl's: 0 committed/promoted, 1 refused, aborted or
# rolled back, 2 usage or connection error.
#
# Environment: BATONCTL (default: batonctl on PATH) for another batonctl.
# Plain POSIX sh; reads the JSON with jq or python3 when there is one, else
# with sed (enough for result, reason and gate).
set -u

prog=ci-upgrade
BATONCTL=${BATONCTL:-batonctl}

usage() {
	cat >&2 <<EOF
usage: $0 -c CONFIG BIN [--canary P --bake S [--steps P1,P2,...]]
          [--force] [--timeout S] [--result FILE]

  -c, --config CONFIG  the baton INI file (batonctl -c)
  BIN                  the baton-sessiond build to deploy
  --canary P           canary rollout starting with P % of the users
  --bake S             seconds to bake each step under the health gates
  --steps P1,P2,...    percentages to grow through before promoting
  --force              deploy a release marked bad / replace an installed
                       version (plain upgrade only)
  --timeout S          batonctl --timeout (default: batonctl's; for a canary
                       the bake time of every step plus 300 s)
  --result FILE        also write the JSON result to FILE

environment: BATONCTL=path/to/batonctl
exit status: 0 deployed, 1 refused/aborted/rolled back, 2 usage or connection error
EOF
	exit 2
}

die_usage() {
	echo "$prog: $*" >&2
	usage
}

is_uint() {
	case $1 in
	'' | *[!0-9]*) return 1 ;;
	esac
	return 0
}

config='' bin='' canary='' bake='' steps='' force='' timeout='' result_file=''
while [ $# -gt 0 ]; do
	case $1 in
	-c | --config)
		[ $# -ge 2 ] || die_usage "$1 needs a value"
		config=$2; shift 2 ;;
	--canary)
		[ $# -ge 2 ] || die_usage "$1 needs a value"
		canary=$2; shift 2 ;;
	--bake)
		[ $# -ge 2 ] || die_usage "$1 needs a value"
		bake=$2; shift 2 ;;
	--steps)
		[ $# -ge 2 ] || die_usage "$1 needs a value"
		steps=$2; shift 2 ;;
	--timeout)
		[ $# -ge 2 ] || die_usage "$1 needs a value"
		timeout=$2; shift 2 ;;
	--result)
		[ $# -ge 2 ] || die_usage "$1 needs a value"
		result_file=$2; shift 2 ;;
	--force)
		force=1; shift ;;
	-h | --help)
		usage ;;
	--)
		shift
		if [ $# -ne 1 ] || [ -n "$bin" ]; then
			die_usage "one BIN expected after --"
		fi
		bin=$1; shift ;;
	-*)
		die_usage "unknown option $1" ;;
	*)
		[ -z "$bin" ] || die_usage "one BIN expected, got '$bin' and '$1'"
		bin=$1; shift ;;
	esac
done

[ -n "$config" ] || die_usage "need -c CONFIG"
[ -n "$bin" ] || die_usage "need the BIN to deploy"
if [ -n "$canary" ]; then
	if ! is_uint "$canary" || [ "$canary" -lt 1 ] || [ "$canary" -gt 100 ]; then
		die_usage "--canary: a percentage 1-100, got '$canary'"
	fi
	[ -n "$bake" ] || die_usage "--canary needs --bake SECONDS"
	is_uint "$bake" || die_usage "--bake: seconds, got '$bake'"
	if [ -n "$steps" ]; then
		case $steps in
		*[!0-9,]* | ,* | *, | *,,*) die_usage "--steps: percentages like 1,10,50, got '$steps'" ;;
		esac
	fi
	[ -z "$force" ] || die_usage "--force applies to a plain upgrade only"
else
	if [ -n "$bake" ] || [ -n "$steps" ]; then
		die_usage "--bake and --steps need --canary"
	fi
fi
[ -z "$timeout" ] || is_uint "$timeout" || die_usage "--timeout: seconds, got '$timeout'"
[ -f "$bin" ] || { echo "$prog: $bin: no such file" >&2; exit 2; }

if [ -n "$canary" ] && [ -z "$timeout" ]; then
	# Every step bakes (the first canary step, each --steps entry), then
	# promotion; migrations themselves are bounded by handoff_timeout.
	nsteps=1
	if [ -n "$steps" ]; then
		nsteps=$(printf '%s\n' "$steps" | tr ',' '\n' | grep -c .)
		nsteps=$((nsteps + 1))
	fi
	timeout=$((bake * nsteps + 300))
fi

set -- -c "$config" --json
[ -z "$timeout" ] || set -- "$@" --timeout "$timeout"
set -- "$@" upgrade "$bin"
if [ -n "$canary" ]; then
	set -- "$@" --canary "$canary" --bake "$bake"
	[ -z "$steps" ] || set -- "$@" --steps "$steps"
fi
[ -z "$force" ] || set -- "$@" --force

echo "$prog: $BATONCTL $*" >&2
out=$("$BATONCTL" "$@")
rc=$?
# batonctl prints exactly one JSON line on stdout with --json (results and
# exit-2 errors alike); keep it for the job's log and artifacts.
[ -z "$out" ] || printf '%s\n' "$out"
if [ -n "$result_file" ] && [ -n "$out" ]; then
	printf '%s\n' "$out" >"$result_file" || echo "$prog: cannot write $result_file" >&2
fi

# json_field KEY: a top-level string (or number) of the result, "" if absent
# or null.
json_field() {
	if command -v jq >/dev/null 2>&1; then
		printf '%s' "$out" | jq -r --arg k "$1" \
			'.[$k] // empty | if type == "string" then . else tostring end' 2>/dev/null
	elif command -v python3 >/dev/null 2>&1; then
		printf '%s' "$out" | python3 -c '
import json, sys
try:
    v = json.loads(sys.stdin.read()).get(sys.argv[1])
except Exception:
    v = None
print("" if v is None else v)' "$1" 2>/dev/null
	else
		printf '%s\n' "$out" | sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" | head -n 1
	fi
}

result=$(json_field result)
reason=$(json_field reason)
gate=$(json_field gate)
error=$(json_field error)

case $rc in
0)
	echo "$prog: ${result:-done}: $bin deployed" >&2 ;;
1)
	msg="${result:-failed}"
	[ -z "$gate" ] || msg="$msg by gate $gate"
	msg="$msg: ${reason:-(no reason given)}"
	echo "$prog: FAILED: $msg" >&2
	[ "${GITHUB_ACTIONS:-}" != true ] || echo "::error title=baton upgrade $result::$msg"
	;;
*)
	msg="batonctl exit $rc: ${error:-${reason:-no result (see above)}}"
	echo "$prog: ERROR: $msg" >&2
	[ "${GITHUB_ACTIONS:-}" != true ] || echo "::error title=baton upgrade::$msg"
	;;
esac
exit "$rc"
