"""shredvault's command line: click commands that parse, prompt, print and map errors to
exit codes. All behaviour lives in :mod:`vault`; nothing here decides policy."""
