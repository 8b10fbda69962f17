# Shared by the bench scripts: `source "$(dirname "$0")/lib.sh"`.

cpu_cs() { # CPU centiseconds (user + system) process $1 has used so far
    awk '{print $14 + $15}' "/proc/$1/stat"
}

servers_cs() { # CPU centiseconds the servers of the cluster in folder $1 have used so far
    local total=0 p
    for p in $(pgrep -f "serve --cluster $1/" || true); do
        total=$((total + $(cpu_cs "$p")))
    done
    echo "$total"
}

busy_cs() { # CPU centiseconds the whole machine has been busy (not idle or waiting for I/O) so far
    awk '/^cpu /{printf "%d", ($2 + $3 + $4 + $7 + $8) * 100 / '"$(getconf CLK_TCK)"'}' /proc/stat
}
