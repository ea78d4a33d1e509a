"""Reading finished runs: tables, the paper's claims judged on seed pairs, figures."""
