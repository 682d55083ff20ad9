# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_aigate_global_optspecs
    string join \n db= h/help V/version
end

function __fish_aigate_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_aigate_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_aigate_using_subcommand
    set -l cmd (__fish_aigate_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c aigate -n "__fish_aigate_needs_command" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c aigate -n "__fish_aigate_needs_command" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_needs_command" -f -a "init" -d 'Create the database (if missing) and bring its schema up to date'
complete -c aigate -n "__fish_aigate_needs_command" -f -a "key" -d 'Create, list, show, rotate and revoke API keys'
complete -c aigate -n "__fish_aigate_needs_command" -f -a "user" -d 'Add, list and manage users who log in for a token'
complete -c aigate -n "__fish_aigate_needs_command" -f -a "tier" -d 'List tiers and set their limits'
complete -c aigate -n "__fish_aigate_needs_command" -f -a "host" -d 'Add, list, drain and remove the model servers behind the gate'
complete -c aigate -n "__fish_aigate_needs_command" -f -a "model" -d 'Pin per-model options (num_ctx, keep_alive) that clients may not change'
complete -c aigate -n "__fish_aigate_needs_command" -f -a "usage" -d 'Requests and tokens by key, user or model'
complete -c aigate -n "__fish_aigate_needs_command" -f -a "audit" -d 'Authentication failures and admin actions; prune old ones'
complete -c aigate -n "__fish_aigate_needs_command" -f -a "status" -d 'Version, database path, schema version and counts'
complete -c aigate -n "__fish_aigate_needs_command" -f -a "serve" -d 'Run the authenticating proxy in front of Ollama'
complete -c aigate -n "__fish_aigate_needs_command" -f -a "top" -d 'Show a running gate live: hosts, requests waiting and in flight, tokens per second'
complete -c aigate -n "__fish_aigate_needs_command" -f -a "completions" -d 'Print a shell completion script'
complete -c aigate -n "__fish_aigate_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c aigate -n "__fish_aigate_using_subcommand init" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand init" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand init" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand key; and not __fish_seen_subcommand_from create list show rotate revoke set help" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand key; and not __fish_seen_subcommand_from create list show rotate revoke set help" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand key; and not __fish_seen_subcommand_from create list show rotate revoke set help" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand key; and not __fish_seen_subcommand_from create list show rotate revoke set help" -f -a "create" -d 'Create a key; it is shown this once'
complete -c aigate -n "__fish_aigate_using_subcommand key; and not __fish_seen_subcommand_from create list show rotate revoke set help" -f -a "list" -d 'List keys (usable ones; --all adds revoked and expired)'
complete -c aigate -n "__fish_aigate_using_subcommand key; and not __fish_seen_subcommand_from create list show rotate revoke set help" -f -a "show" -d 'Show one key'
complete -c aigate -n "__fish_aigate_using_subcommand key; and not __fish_seen_subcommand_from create list show rotate revoke set help" -f -a "rotate" -d 'Replace a key: a new key with the same user, tier, name and limits; the old one keeps working for the grace period'
complete -c aigate -n "__fish_aigate_using_subcommand key; and not __fish_seen_subcommand_from create list show rotate revoke set help" -f -a "revoke" -d 'Revoke a key at once; a running serve refuses it within a second'
complete -c aigate -n "__fish_aigate_using_subcommand key; and not __fish_seen_subcommand_from create list show rotate revoke set help" -f -a "set" -d 'Change a key\'s tier, label or per-key limits'
complete -c aigate -n "__fish_aigate_using_subcommand key; and not __fish_seen_subcommand_from create list show rotate revoke set help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from create" -l tier -d 'The tier [default: the user\'s tier, else free]' -r
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from create" -l user -d 'The user who owns the key' -r
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from create" -l name -d 'A label to recognise the key by' -r
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from create" -l expires-in -d 'Expire the key after this long (30s, 15m, 24h, 7d)' -r
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from create" -l rpm -d 'Requests per minute for this key (\'tier\' for the tier\'s)' -r
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from create" -l concurrency -d 'Requests in flight for this key (\'tier\' for the tier\'s)' -r
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from create" -l tokens-per-day -d 'Prompt + completion tokens per UTC day for this key (\'tier\' for the tier\'s)' -r
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from create" -l models -d 'Models this key may use, comma-separated globs (\'tier\' for the tier\'s)' -r
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from create" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from create" -l json -d 'Print the key as one JSON document'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from create" -s q -l quiet -d 'Print only the raw key, for KEY=$(aigate key create --quiet)'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from create" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from create" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from list" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from list" -l all -d 'Include revoked and expired keys'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from list" -l json -d 'Print JSON instead of a table'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from show" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from show" -l json -d 'Print JSON instead of a table'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from show" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from rotate" -l grace -d 'How long the old key keeps working' -r
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from rotate" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from rotate" -l json -d 'Print the key as one JSON document'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from rotate" -s q -l quiet -d 'Print only the raw key, for KEY=$(aigate key create --quiet)'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from rotate" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from rotate" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from revoke" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from revoke" -s y -l yes -d 'Do not ask for confirmation'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from revoke" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from revoke" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from set" -l tier -d 'The new tier' -r
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from set" -l name -d 'The new label' -r
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from set" -l rpm -d 'Requests per minute for this key (\'tier\' for the tier\'s)' -r
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from set" -l concurrency -d 'Requests in flight for this key (\'tier\' for the tier\'s)' -r
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from set" -l tokens-per-day -d 'Prompt + completion tokens per UTC day for this key (\'tier\' for the tier\'s)' -r
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from set" -l models -d 'Models this key may use, comma-separated globs (\'tier\' for the tier\'s)' -r
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from set" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from set" -l json -d 'Print JSON instead of a table'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from set" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from set" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from help" -f -a "create" -d 'Create a key; it is shown this once'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from help" -f -a "list" -d 'List keys (usable ones; --all adds revoked and expired)'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from help" -f -a "show" -d 'Show one key'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from help" -f -a "rotate" -d 'Replace a key: a new key with the same user, tier, name and limits; the old one keeps working for the grace period'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from help" -f -a "revoke" -d 'Revoke a key at once; a running serve refuses it within a second'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from help" -f -a "set" -d 'Change a key\'s tier, label or per-key limits'
complete -c aigate -n "__fish_aigate_using_subcommand key; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c aigate -n "__fish_aigate_using_subcommand user; and not __fish_seen_subcommand_from add list passwd disable enable remove set-tier help" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand user; and not __fish_seen_subcommand_from add list passwd disable enable remove set-tier help" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand user; and not __fish_seen_subcommand_from add list passwd disable enable remove set-tier help" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand user; and not __fish_seen_subcommand_from add list passwd disable enable remove set-tier help" -f -a "add" -d 'Add a user (asks for the password twice on a terminal)'
complete -c aigate -n "__fish_aigate_using_subcommand user; and not __fish_seen_subcommand_from add list passwd disable enable remove set-tier help" -f -a "list" -d 'List users'
complete -c aigate -n "__fish_aigate_using_subcommand user; and not __fish_seen_subcommand_from add list passwd disable enable remove set-tier help" -f -a "passwd" -d 'Change a user\'s password; tokens issued before stop working'
complete -c aigate -n "__fish_aigate_using_subcommand user; and not __fish_seen_subcommand_from add list passwd disable enable remove set-tier help" -f -a "disable" -d 'Disable a user: no login, their tokens and keys are refused'
complete -c aigate -n "__fish_aigate_using_subcommand user; and not __fish_seen_subcommand_from add list passwd disable enable remove set-tier help" -f -a "enable" -d 'Enable a disabled user'
complete -c aigate -n "__fish_aigate_using_subcommand user; and not __fish_seen_subcommand_from add list passwd disable enable remove set-tier help" -f -a "remove" -d 'Remove a user and revoke their keys'
complete -c aigate -n "__fish_aigate_using_subcommand user; and not __fish_seen_subcommand_from add list passwd disable enable remove set-tier help" -f -a "set-tier" -d 'Move a user to another tier (their keys keep their own tier)'
complete -c aigate -n "__fish_aigate_using_subcommand user; and not __fish_seen_subcommand_from add list passwd disable enable remove set-tier help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from add" -l tier -d 'The user\'s tier' -r
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from add" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from add" -l password-stdin -d 'Read the password from standard input instead of a prompt'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from add" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from list" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from list" -l json -d 'Print JSON instead of a table'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from passwd" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from passwd" -l password-stdin -d 'Read the password from standard input instead of a prompt'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from passwd" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from passwd" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from disable" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from disable" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from disable" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from enable" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from enable" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from enable" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from remove" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from remove" -s y -l yes -d 'Do not ask for confirmation'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from remove" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from remove" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from set-tier" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from set-tier" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from set-tier" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from help" -f -a "add" -d 'Add a user (asks for the password twice on a terminal)'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from help" -f -a "list" -d 'List users'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from help" -f -a "passwd" -d 'Change a user\'s password; tokens issued before stop working'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from help" -f -a "disable" -d 'Disable a user: no login, their tokens and keys are refused'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from help" -f -a "enable" -d 'Enable a disabled user'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from help" -f -a "remove" -d 'Remove a user and revoke their keys'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from help" -f -a "set-tier" -d 'Move a user to another tier (their keys keep their own tier)'
complete -c aigate -n "__fish_aigate_using_subcommand user; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c aigate -n "__fish_aigate_using_subcommand tier; and not __fish_seen_subcommand_from list set help" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand tier; and not __fish_seen_subcommand_from list set help" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand tier; and not __fish_seen_subcommand_from list set help" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand tier; and not __fish_seen_subcommand_from list set help" -f -a "list" -d 'List tiers and their limits'
complete -c aigate -n "__fish_aigate_using_subcommand tier; and not __fish_seen_subcommand_from list set help" -f -a "set" -d 'Create a tier or change its limits (\'unlimited\' clears a limit)'
complete -c aigate -n "__fish_aigate_using_subcommand tier; and not __fish_seen_subcommand_from list set help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from list" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from list" -l json -d 'Print JSON instead of a table'
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from set" -l rpm -d 'Requests per minute per key' -r
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from set" -l concurrency -d 'Requests in flight per key' -r
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from set" -l tokens-per-day -d 'Prompt + completion tokens per key per UTC day' -r
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from set" -l models -d 'Models the tier may use, comma-separated globs (e.g. \'llama3*,qwen2.5:7b\')' -r
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from set" -l priority -d 'When requests wait for a free slot, a higher priority is always served first (-1000 to 1000; a new tier has 0)' -r
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from set" -l weight -d 'Share of the slots among waiting callers of one priority: a caller of weight 3 gets three turns for every one of a caller of weight 1 (1 to 1000; a new tier has 1)' -r
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from set" -l max-wait -d 'How long a request may wait for a free slot before it gets 503 with Retry-After (1s to 1d, e.g. 30s or 5m; a new tier has no bound)' -r
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from set" -l max-queued -d 'Requests one user (or one key without a user) may have waiting; one more gets 429 at once (0 to 100000; 0 never waits; a new tier has no bound)' -r
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from set" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from set" -l admin -d 'The tier may use /admin/* and Ollama\'s model management'
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from set" -l no-admin -d 'The tier may not administer'
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from set" -l json -d 'Print JSON instead of a table'
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from set" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from set" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from help" -f -a "list" -d 'List tiers and their limits'
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from help" -f -a "set" -d 'Create a tier or change its limits (\'unlimited\' clears a limit)'
complete -c aigate -n "__fish_aigate_using_subcommand tier; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c aigate -n "__fish_aigate_using_subcommand host; and not __fish_seen_subcommand_from add list drain undrain remove help" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand host; and not __fish_seen_subcommand_from add list drain undrain remove help" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand host; and not __fish_seen_subcommand_from add list drain undrain remove help" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand host; and not __fish_seen_subcommand_from add list drain undrain remove help" -f -a "add" -d 'Add a model server; a running serve uses it within a second'
complete -c aigate -n "__fish_aigate_using_subcommand host; and not __fish_seen_subcommand_from add list drain undrain remove help" -f -a "list" -d 'List hosts and the state a running serve last saw'
complete -c aigate -n "__fish_aigate_using_subcommand host; and not __fish_seen_subcommand_from add list drain undrain remove help" -f -a "drain" -d 'Send a host no new requests; those in flight finish'
complete -c aigate -n "__fish_aigate_using_subcommand host; and not __fish_seen_subcommand_from add list drain undrain remove help" -f -a "undrain" -d 'Send a drained host requests again'
complete -c aigate -n "__fish_aigate_using_subcommand host; and not __fish_seen_subcommand_from add list drain undrain remove help" -f -a "remove" -d 'Remove a host; a running serve stops using it within a second'
complete -c aigate -n "__fish_aigate_using_subcommand host; and not __fish_seen_subcommand_from add list drain undrain remove help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from add" -l name -d 'The name to refer to it by [default: HOST:PORT of the URL]' -r
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from add" -l kind -d 'What the server speaks' -r -f -a "ollama\t'Ollama (/api/tags, /api/ps)'
openai\t'An OpenAI-compatible server: llama.cpp\'s server, vLLM, LM Studio (/v1/models)'"
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from add" -l slots -d 'Requests it generates at once (Ollama\'s OLLAMA_NUM_PARALLEL)' -r
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from add" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from add" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from list" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from list" -l json -d 'Print JSON instead of a table'
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from drain" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from drain" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from drain" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from undrain" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from undrain" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from undrain" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from remove" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from remove" -s y -l yes -d 'Do not ask for confirmation'
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from remove" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from remove" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from help" -f -a "add" -d 'Add a model server; a running serve uses it within a second'
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from help" -f -a "list" -d 'List hosts and the state a running serve last saw'
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from help" -f -a "drain" -d 'Send a host no new requests; those in flight finish'
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from help" -f -a "undrain" -d 'Send a drained host requests again'
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from help" -f -a "remove" -d 'Remove a host; a running serve stops using it within a second'
complete -c aigate -n "__fish_aigate_using_subcommand host; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c aigate -n "__fish_aigate_using_subcommand model; and not __fish_seen_subcommand_from pin unpin list help" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand model; and not __fish_seen_subcommand_from pin unpin list help" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand model; and not __fish_seen_subcommand_from pin unpin list help" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand model; and not __fish_seen_subcommand_from pin unpin list help" -f -a "pin" -d 'Pin a model\'s options, so that clients cannot make a host reload it'
complete -c aigate -n "__fish_aigate_using_subcommand model; and not __fish_seen_subcommand_from pin unpin list help" -f -a "unpin" -d 'Remove a model\'s pinned options; clients choose them again'
complete -c aigate -n "__fish_aigate_using_subcommand model; and not __fish_seen_subcommand_from pin unpin list help" -f -a "list" -d 'List pinned models and their options'
complete -c aigate -n "__fish_aigate_using_subcommand model; and not __fish_seen_subcommand_from pin unpin list help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c aigate -n "__fish_aigate_using_subcommand model; and __fish_seen_subcommand_from pin" -l num-ctx -d 'Context length, in tokens' -r
complete -c aigate -n "__fish_aigate_using_subcommand model; and __fish_seen_subcommand_from pin" -l keep-alive -d 'How long the model stays loaded after a request (30m, 24h; 0 unloads at once, -1 or forever keeps it)' -r
complete -c aigate -n "__fish_aigate_using_subcommand model; and __fish_seen_subcommand_from pin" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand model; and __fish_seen_subcommand_from pin" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c aigate -n "__fish_aigate_using_subcommand model; and __fish_seen_subcommand_from pin" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand model; and __fish_seen_subcommand_from unpin" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand model; and __fish_seen_subcommand_from unpin" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand model; and __fish_seen_subcommand_from unpin" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand model; and __fish_seen_subcommand_from list" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand model; and __fish_seen_subcommand_from list" -l json -d 'Print JSON instead of a table'
complete -c aigate -n "__fish_aigate_using_subcommand model; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand model; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand model; and __fish_seen_subcommand_from help" -f -a "pin" -d 'Pin a model\'s options, so that clients cannot make a host reload it'
complete -c aigate -n "__fish_aigate_using_subcommand model; and __fish_seen_subcommand_from help" -f -a "unpin" -d 'Remove a model\'s pinned options; clients choose them again'
complete -c aigate -n "__fish_aigate_using_subcommand model; and __fish_seen_subcommand_from help" -f -a "list" -d 'List pinned models and their options'
complete -c aigate -n "__fish_aigate_using_subcommand model; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c aigate -n "__fish_aigate_using_subcommand usage" -l since -d 'Only usage from this long ago on, counted in whole UTC days [default: all]' -r
complete -c aigate -n "__fish_aigate_using_subcommand usage" -l by -d 'Group by key, user or model [default: key, user and model]' -r -f -a "key\t''
user\t''
model\t''"
complete -c aigate -n "__fish_aigate_using_subcommand usage" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand usage" -l json -d 'Print JSON instead of a table'
complete -c aigate -n "__fish_aigate_using_subcommand usage" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand usage" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand audit" -l since -d 'Only entries from this long ago on' -r
complete -c aigate -n "__fish_aigate_using_subcommand audit" -l prune-older-than -d 'Delete the entries older than this (e.g. 90d) instead of listing; asks first on a terminal' -r
complete -c aigate -n "__fish_aigate_using_subcommand audit" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand audit" -l json -d 'Print JSON instead of a table'
complete -c aigate -n "__fish_aigate_using_subcommand audit" -s y -l yes -d 'Do not ask before pruning'
complete -c aigate -n "__fish_aigate_using_subcommand audit" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand audit" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand status" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand status" -l json -d 'Print JSON instead of a table'
complete -c aigate -n "__fish_aigate_using_subcommand status" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand status" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l listen -d 'Address to listen on (IP:PORT, or HOST:PORT resolved at start)' -r
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l upstream -d 'An Ollama host for this run, beside those of `aigate host add`; repeat (or separate with commas) for several [default: http://127.0.0.1:11434 when no host is stored]' -r
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l probe-interval -d 'How often each host is asked for its models and health' -r
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l tls-cert -d 'PEM certificate chain: serve HTTPS (with --tls-key)' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l tls-key -d 'PEM private key for --tls-cert' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l token-ttl -d 'Lifetime of tokens issued by /auth/login' -r
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l jwt-secret-file -d 'File holding the JWT secret (instead of $AIGATE_JWT_SECRET)' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l trusted-proxy -d 'Peers whose X-Forwarded-For names the client (repeatable CIDR); that client address is also what the login limits count' -r
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l max-body -d 'Largest request body accepted (bytes; K, M, G suffixes, powers of 1024)' -r
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l connect-timeout -d 'Time to connect to the upstream' -r
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l response-timeout -d 'Time for the upstream to start answering (a model may take minutes to load)' -r
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l idle-timeout -d 'Longest silence between two chunks of a streamed response' -r
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l header-timeout -d 'Time a client has to send its request head (slowloris guard)' -r
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l body-timeout -d 'Longest silence between two pieces of a request body (a stalled upload is answered 408)' -r
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l shutdown-timeout -d 'On SIGTERM/SIGINT, how long in-flight requests may take to finish' -r
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l metrics-listen -d 'Serve Prometheus metrics (/metrics) and the live status `aigate top` reads (/status) on this separate address, IP:PORT or HOST:PORT (off by default)' -r
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l workers -d 'Worker threads, each with its own listener (SO_REUSEPORT), runtime and upstream connections [default: one per CPU]' -r
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l cors-origin -d 'Answer CORS preflight for this browser origin (repeatable)' -r
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l max-conns-per-ip -d 'Most open connections from one client address (an IPv6 /64 is one address; --trusted-proxy peers are exempt)' -r
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l max-conns -d 'Most open client connections in all [default: the open-files limit, raised to its hard limit, less a reserve for upstream connections and the database]' -r
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l audit-retention -d 'How long audit rows are kept (pruned hourly); `off` or 0 keeps them forever' -r
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand serve" -l no-login -d 'Serve API keys only: no /auth/login, no JWTs'
complete -c aigate -n "__fish_aigate_using_subcommand serve" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand serve" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand top" -l metrics -d 'The gate\'s metrics listener (its --metrics-listen), IP:PORT or HOST:PORT' -r
complete -c aigate -n "__fish_aigate_using_subcommand top" -l interval -d 'How often the view is redrawn (100ms to 1h)' -r
complete -c aigate -n "__fish_aigate_using_subcommand top" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand top" -l once -d 'Print one view and exit'
complete -c aigate -n "__fish_aigate_using_subcommand top" -l json -d 'Print the gate\'s status document as JSON and exit'
complete -c aigate -n "__fish_aigate_using_subcommand top" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand top" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand completions" -l db -d 'The SQLite database [default: $XDG_DATA_HOME/aigate/aigate.db]' -r -F
complete -c aigate -n "__fish_aigate_using_subcommand completions" -s h -l help -d 'Print help'
complete -c aigate -n "__fish_aigate_using_subcommand completions" -s V -l version -d 'Print version'
complete -c aigate -n "__fish_aigate_using_subcommand help; and not __fish_seen_subcommand_from init key user tier host model usage audit status serve top completions help" -f -a "init" -d 'Create the database (if missing) and bring its schema up to date'
complete -c aigate -n "__fish_aigate_using_subcommand help; and not __fish_seen_subcommand_from init key user tier host model usage audit status serve top completions help" -f -a "key" -d 'Create, list, show, rotate and revoke API keys'
complete -c aigate -n "__fish_aigate_using_subcommand help; and not __fish_seen_subcommand_from init key user tier host model usage audit status serve top completions help" -f -a "user" -d 'Add, list and manage users who log in for a token'
complete -c aigate -n "__fish_aigate_using_subcommand help; and not __fish_seen_subcommand_from init key user tier host model usage audit status serve top completions help" -f -a "tier" -d 'List tiers and set their limits'
complete -c aigate -n "__fish_aigate_using_subcommand help; and not __fish_seen_subcommand_from init key user tier host model usage audit status serve top completions help" -f -a "host" -d 'Add, list, drain and remove the model servers behind the gate'
complete -c aigate -n "__fish_aigate_using_subcommand help; and not __fish_seen_subcommand_from init key user tier host model usage audit status serve top completions help" -f -a "model" -d 'Pin per-model options (num_ctx, keep_alive) that clients may not change'
complete -c aigate -n "__fish_aigate_using_subcommand help; and not __fish_seen_subcommand_from init key user tier host model usage audit status serve top completions help" -f -a "usage" -d 'Requests and tokens by key, user or model'
complete -c aigate -n "__fish_aigate_using_subcommand help; and not __fish_seen_subcommand_from init key user tier host model usage audit status serve top completions help" -f -a "audit" -d 'Authentication failures and admin actions; prune old ones'
complete -c aigate -n "__fish_aigate_using_subcommand help; and not __fish_seen_subcommand_from init key user tier host model usage audit status serve top completions help" -f -a "status" -d 'Version, database path, schema version and counts'
complete -c aigate -n "__fish_aigate_using_subcommand help; and not __fish_seen_subcommand_from init key user tier host model usage audit status serve top completions help" -f -a "serve" -d 'Run the authenticating proxy in front of Ollama'
complete -c aigate -n "__fish_aigate_using_subcommand help; and not __fish_seen_subcommand_from init key user tier host model usage audit status serve top completions help" -f -a "top" -d 'Show a running gate live: hosts, requests waiting and in flight, tokens per second'
complete -c aigate -n "__fish_aigate_using_subcommand help; and not __fish_seen_subcommand_from init key user tier host model usage audit status serve top completions help" -f -a "completions" -d 'Print a shell completion script'
complete -c aigate -n "__fish_aigate_using_subcommand help; and not __fish_seen_subcommand_from init key user tier host model usage audit status serve top completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from key" -f -a "create" -d 'Create a key; it is shown this once'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from key" -f -a "list" -d 'List keys (usable ones; --all adds revoked and expired)'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from key" -f -a "show" -d 'Show one key'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from key" -f -a "rotate" -d 'Replace a key: a new key with the same user, tier, name and limits; the old one keeps working for the grace period'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from key" -f -a "revoke" -d 'Revoke a key at once; a running serve refuses it within a second'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from key" -f -a "set" -d 'Change a key\'s tier, label or per-key limits'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from user" -f -a "add" -d 'Add a user (asks for the password twice on a terminal)'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from user" -f -a "list" -d 'List users'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from user" -f -a "passwd" -d 'Change a user\'s password; tokens issued before stop working'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from user" -f -a "disable" -d 'Disable a user: no login, their tokens and keys are refused'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from user" -f -a "enable" -d 'Enable a disabled user'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from user" -f -a "remove" -d 'Remove a user and revoke their keys'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from user" -f -a "set-tier" -d 'Move a user to another tier (their keys keep their own tier)'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from tier" -f -a "list" -d 'List tiers and their limits'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from tier" -f -a "set" -d 'Create a tier or change its limits (\'unlimited\' clears a limit)'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from host" -f -a "add" -d 'Add a model server; a running serve uses it within a second'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from host" -f -a "list" -d 'List hosts and the state a running serve last saw'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from host" -f -a "drain" -d 'Send a host no new requests; those in flight finish'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from host" -f -a "undrain" -d 'Send a drained host requests again'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from host" -f -a "remove" -d 'Remove a host; a running serve stops using it within a second'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from model" -f -a "pin" -d 'Pin a model\'s options, so that clients cannot make a host reload it'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from model" -f -a "unpin" -d 'Remove a model\'s pinned options; clients choose them again'
complete -c aigate -n "__fish_aigate_using_subcommand help; and __fish_seen_subcommand_from model" -f -a "list" -d 'List pinned models and their options'
