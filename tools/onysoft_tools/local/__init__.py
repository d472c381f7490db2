"""The local gateway's engine room: what `onysoft dev` adds to moto server so it behaves like a database
(transactions that cost what they touch, a journal that keeps every acknowledged write)."""
