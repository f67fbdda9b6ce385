-- The SQL face of duckllm's functions. Each macro packs its arguments, named parameters and
-- options STRUCT into one JSON object for the Python UDF behind it, so arguments of any shape
-- reach one validator with messages of our own.
-- Connection variables: duckllm_model, the default model (SET VARIABLE duckllm_model =
-- 'qwen2.5-coder-0.5b'); duckllm_cache, false to bypass the result cache.
-- TEMP: the macros live with the connection and are never written into a database file.

CREATE OR REPLACE TEMP MACRO llm_classify(text, labels, options := NULL, descriptions := NULL,
                                          instructions := NULL, model := NULL, confidence := NULL) AS
    __duckllm_classify(text, to_json({'labels': labels, 'options': options,
        'descriptions': descriptions, 'instructions': instructions,
        'model': coalesce(model, getvariable('duckllm_model')), 'confidence': confidence,
        'cache': getvariable('duckllm_cache')})::VARCHAR);

CREATE OR REPLACE TEMP MACRO llm_clean(text, instructions := NULL, options := NULL, model := NULL) AS
    __duckllm_clean(text, to_json({'instructions': instructions, 'options': options,
        'model': coalesce(model, getvariable('duckllm_model')),
        'cache': getvariable('duckllm_cache')})::VARCHAR);

-- Cumulative counters of this process: calls, rows, cache and dedup hits, tokens, seconds, device.
CREATE OR REPLACE TEMP MACRO duckllm_stats() AS TABLE SELECT unnest(__duckllm_stats());
