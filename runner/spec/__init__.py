"""What a run, and a ladder of runs, is asked to do: the job and ladder specs and the YAML reader behind them.

Specs are validated before any work starts: everything here is data and parsing, nothing trains. Storage is the
only other group it uses (a spec's storage URI is checked as it is read).
"""
