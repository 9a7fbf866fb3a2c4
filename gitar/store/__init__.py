"""What gitar keeps in git: every git call, ref names and moves, the notebook of records, the ledger, pins, signatures."""
