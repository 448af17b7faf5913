# Shell-word helpers shared by the launch scripts (sourced, not run).

# One word as a shell would need it: bare if safe, else double or single quotes.
quote() {
  local s="$1"
  if [[ "$s" =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then printf '%s' "$s"
  elif [[ "$s" != *[\"\$\`\\!]* ]]; then printf '"%s"' "$s"
  else printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

# A command line that can be pasted; `--flag=value` keeps the flag outside the quotes.
show() {
  local words=() arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
      words+=("${BASH_REMATCH[1]}$(quote "${BASH_REMATCH[2]}")")
    else
      words+=("$(quote "$arg")")
    fi
  done
  echo "${words[*]}"
}
