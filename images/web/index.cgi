#!/bin/sh
# Answers directory URLs without an index.html (and /cgi-bin/index.cgi) live from `hostname`.
printf 'Content-Type: text/plain\r\n\r\nHello from %s\n' "$(hostname)"
