"""The local gateway's parts (`onysoft dev`): each emulates one AWS service on a developer's machine, and
what it adds to moto server so it behaves like a database (transactions that cost what they touch, a journal
that keeps every acknowledged write)."""
