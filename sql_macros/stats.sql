-- duckllm's SQL macros that are not one function's; each function's own macro is made from its
-- declaration (duckllm/sql/macros.py). TEMP: they live with the connection, never in a file.

-- Cumulative counters of this process: calls, rows, cache and dedup hits, tokens, seconds, device.
CREATE OR REPLACE TEMP MACRO duckllm_stats() AS TABLE SELECT unnest(__duckllm_stats());
