# bash completion for forkq(1): commands, their options, --state values,
# --rlimit names, task ids (asked of forkqd with `forkq list`), and the
# task's PROGRAM and arguments after `submit [options] --`.
#
# Installed as $(datadir)/bash-completion/completions/forkq, where
# bash-completion loads it on first use; or source this file from ~/.bashrc.
# It needs nothing from bash-completion, but uses its _command_offset for
# the task's command line when that is there.

# Words (commands, options, ids) never hold blanks: split them as usual.
# shellcheck disable=SC2207

_forkq_commands="submit status list show cancel retry wait logs output
heartbeat prune cron pause resume stats metrics"

_forkq_submit_opts="--name --queue --priority --timeout --heartbeat-timeout
--retries --backoff --delay --at --rlimit --cwd --env --inherit-env --unique
--debounce --after --json --wait --help --"

# cron add refuses --name, --unique, --debounce, --wait and --at.
_forkq_cron_add_opts="--queue --priority --timeout --heartbeat-timeout
--retries --backoff --delay --rlimit --cwd --env --inherit-env --after
--json --help --"

_forkq_states="queued running succeeded failed canceled"
_forkq_rlimits="cpu= as= fsize= core= nofile= nproc="

# Task ids the daemon lists for this user (newest first); nothing when it
# cannot be reached. $1: the `-s SOCKET` words of the command line, if any.
_forkq_ids()
{
	command forkq "$@" list --limit 100 --json 2>/dev/null |
	    grep -o '"id": *[0-9]*' | grep -o '[0-9]*$'
}

# Completes `[submit options] [--] PROGRAM [ARG...]` whose first word is
# words[$1], the options offered being $2: options and their values, then
# the task's command line, which starts after `--` or at the first word
# that is neither an option nor an option's value.
_forkq_task_line()
{
	local i prog=-1 skip=0

	for ((i = $1; i < cword; i++)); do
		if ((skip)); then
			# An option's value; K=V values come split at '='.
			skip=0
			if [[ ${words[i + 1]} == "=" ]]; then
				((i += 2))
				((i >= cword)) && return
			fi
			continue
		fi
		case ${words[i]} in
		--)
			prog=$((i + 1))
			break
			;;
		--inherit-env | --json | --wait | --help | -h | =) ;;
		--*=*) ;;
		--*)
			[[ ${words[i + 1]} == "=" ]] && ((i++))
			skip=1
			;;
		*)
			prog=$i
			break
			;;
		esac
	done
	if ((prog < 0)); then
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W "$2" -- "$cur"))
			return
		fi
		prog=$cword
	fi
	if declare -F _command_offset >/dev/null; then
		_command_offset "$prog"
	elif ((prog == cword)); then
		mapfile -t COMPREPLY < <(compgen -c -- "$cur" | sort -u)
	else
		compopt -o filenames 2>/dev/null
		mapfile -t COMPREPLY < <(compgen -f -- "$cur")
	fi
}

_forkq()
{
	local cur prev words cword i cmd="" cmdi=0 sock=()
	words=("${COMP_WORDS[@]}")
	cword=$COMP_CWORD
	cur=${words[cword]}
	prev=""
	((cword > 0)) && prev=${words[cword - 1]}
	COMPREPLY=()

	# --opt=value: bash splits it at '=' (COMP_WORDBREAKS).
	if [[ $cur == "=" && $prev == --* ]]; then
		cur=""
	elif [[ $prev == "=" ]] && ((cword > 1)); then
		prev=${words[cword - 2]}
	fi

	# The global options, then the command word.
	for ((i = 1; i < cword; i++)); do
		case ${words[i]} in
		-s | --socket)
			# --socket=PATH comes split: --socket, =, PATH.
			if [[ ${words[i + 1]} == "=" ]]; then
				sock=(-s "${words[i + 2]}")
				((i += 2))
			else
				sock=(-s "${words[i + 1]}")
				((i++))
			fi
			;;
		-s?*)
			sock=(-s "${words[i]#-s}")
			;;
		-*) ;;
		*)
			cmd=${words[i]}
			cmdi=$i
			break
			;;
		esac
	done

	if [[ -z $cmd ]]; then
		case $prev in
		-s | --socket)
			compopt -o filenames 2>/dev/null
			mapfile -t COMPREPLY < <(compgen -f -- "$cur")
			return
			;;
		esac
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W "-s --socket --help --version" \
			    -- "$cur"))
		else
			COMPREPLY=($(compgen -W "$_forkq_commands" -- "$cur"))
		fi
		return
	fi

	# Values of options.
	case $prev in
	--state)
		COMPREPLY=($(compgen -W "$_forkq_states" -- "$cur"))
		return
		;;
	--rlimit)
		compopt -o nospace 2>/dev/null
		COMPREPLY=($(compgen -W "$_forkq_rlimits" -- "$cur"))
		return
		;;
	--env)
		compopt -o nospace 2>/dev/null
		COMPREPLY=($(compgen -e -S = -- "$cur"))
		return
		;;
	--cwd)
		compopt -o filenames 2>/dev/null
		mapfile -t COMPREPLY < <(compgen -d -- "$cur")
		return
		;;
	--task | --after | --before)
		COMPREPLY=($(compgen -W "$(_forkq_ids "${sock[@]}")" \
		    -- "$cur"))
		return
		;;
	--name | --queue | --priority | --timeout | --heartbeat-timeout | \
	--retries | --backoff | --delay | --at | --unique | --debounce | \
	--limit | -n | --lines | --attempt | --progress | --older-than | --since)
		return
		;;
	esac

	case $cmd in
	cron)
		if ((cword == cmdi + 1)); then
			COMPREPLY=($(compgen -W "add list rm" -- "$cur"))
			return
		fi
		case ${words[cmdi + 1]} in
		add)
			# cron add NAME SCHEDULE [submit options] [--] PROGRAM
			((cword > cmdi + 3)) && _forkq_task_line \
			    $((cmdi + 4)) "$_forkq_cron_add_opts"
			;;
		list)
			[[ $cur == -* ]] &&
			    COMPREPLY=($(compgen -W "--json --help" -- "$cur"))
			;;
		rm)
			[[ $cur == -* ]] &&
			    COMPREPLY=($(compgen -W "--uid --json --help" \
			    -- "$cur"))
			;;
		esac
		;;
	submit)
		_forkq_task_line $((cmdi + 1)) "$_forkq_submit_opts"
		;;
	list)
		COMPREPLY=($(compgen -W "--state --queue --limit --before \
		    --json --help" -- "$cur"))
		;;
	show | cancel | retry | wait)
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W "--json --help" -- "$cur"))
		else
			COMPREPLY=($(compgen -W "$(_forkq_ids "${sock[@]}")" \
			    -- "$cur"))
		fi
		;;
	logs)
		COMPREPLY=($(compgen -W "-f -n --task --json --help" \
		    -- "$cur"))
		;;
	output)
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W "-f --stderr --attempt --json \
			    --help" -- "$cur"))
		else
			COMPREPLY=($(compgen -W "$(_forkq_ids "${sock[@]}")" \
			    -- "$cur"))
		fi
		;;
	heartbeat)
		COMPREPLY=($(compgen -W "--progress --help" -- "$cur"))
		;;
	prune)
		COMPREPLY=($(compgen -W "--older-than --json --help" \
		    -- "$cur"))
		;;
	stats)
		COMPREPLY=($(compgen -W "--since --name --json --help" \
		    -- "$cur"))
		;;
	status | metrics | pause | resume)
		COMPREPLY=($(compgen -W "--json --help" -- "$cur"))
		;;
	esac
}

complete -F _forkq forkq
