"""One attempt: preflight, train, measure, judge, record, move; the hook entry and the result line."""
