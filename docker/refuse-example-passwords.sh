#!/bin/sh
# Entrypoint of every service of docker-compose.yml: refuse to start while a password in the
# environment (any variable ending in PASSWORD) is still the example value of .env.example.
# Then run the service's own command: `refuse-example-passwords.sh command args...`.
set -eu
for name in $(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*PASSWORD\)=.*/\1/p'); do
  eval "value=\${$name-}"
  if [ "$value" = "change-me" ]; then
    echo "refusing to start: $name is still 'change-me', the example from .env.example; set a password of your own in .env" >&2
    exit 1
  fi
done
exec "$@"
