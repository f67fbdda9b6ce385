-- The SQL face of duckllm's functions. Each macro packs its arguments, named parameters and
-- options STRUCT into one JSON object for the Python UDF behind it, so arguments of any shape
-- reach one validator with messages of our own.
-- Connection variables: duckllm_model, the default model (SET VARIABLE duckllm_model =
-- 'qwen2.5-coder-0.5b'); duckllm_cache, false to bypass the result cache.
-- TEMP: the macros live with the connection and are never written into a database file.
-- A text of another type (a number, a date, a BLOB) is read as its VARCHAR form, as a cast writes it.

CREATE OR REPLACE TEMP MACRO llm_classify(text, labels, options := NULL, descriptions := NULL,
                                          instructions := NULL, examples := NULL, nearest := NULL,
                                          preselect := NULL, model := NULL, confidence := NULL,
                                          contextual := NULL) AS
    __duckllm_classify(text::VARCHAR, to_json({'labels': labels, 'options': options,
        'descriptions': descriptions, 'instructions': instructions, 'examples': examples,
        'nearest': nearest, 'preselect': preselect,
        'model': coalesce(model, getvariable('duckllm_model')), 'confidence': confidence,
        'contextual': contextual, 'cache': getvariable('duckllm_cache')})::VARCHAR);

CREATE OR REPLACE TEMP MACRO llm_clean(text, instructions := NULL, options := NULL, examples := NULL,
                                       model := NULL) AS
    __duckllm_clean(text::VARCHAR, to_json({'instructions': instructions, 'options': options, 'examples': examples,
        'model': coalesce(model, getvariable('duckllm_model')),
        'cache': getvariable('duckllm_cache')})::VARCHAR);

-- The pair travels as one JSON text, so dedup and the cache key on the pair; NULL if either is,
-- '' (blank: no model work) if either is only whitespace.
CREATE OR REPLACE TEMP MACRO llm_match(a, b, instructions := NULL, options := NULL, examples := NULL,
                                       model := NULL) AS
    __duckllm_match(CASE WHEN a IS NULL OR b IS NULL THEN NULL
                         WHEN regexp_full_match(a::VARCHAR, '[\s\p{Z}]*')
                           OR regexp_full_match(b::VARCHAR, '[\s\p{Z}]*') THEN ''
                         ELSE to_json([a::VARCHAR, b::VARCHAR])::VARCHAR END,
        to_json({'instructions': instructions, 'options': options, 'examples': examples,
        'model': coalesce(model, getvariable('duckllm_model')),
        'cache': getvariable('duckllm_cache')})::VARCHAR);

-- Typed by the schema: the UDF answers JSON, read here into STRUCT(<fields>, confidence, note).
CREATE OR REPLACE TEMP MACRO llm_extract(text, schema, instructions := NULL, options := NULL,
                                         model := NULL) AS
    from_json(__duckllm_extract(text::VARCHAR, to_json({'schema': schema, 'instructions': instructions,
        'options': options, 'model': coalesce(model, getvariable('duckllm_model')),
        'cache': getvariable('duckllm_cache')})::VARCHAR),
        __duckllm_extract_structure(to_json(schema)::VARCHAR));

CREATE OR REPLACE TEMP MACRO llm_entities(text, types := ['PER', 'ORG', 'LOC', 'MISC'], descriptions := NULL,
                                          instructions := NULL, max_entities := NULL, options := NULL,
                                          model := NULL) AS
    __duckllm_entities(text::VARCHAR, to_json({'types': types, 'descriptions': descriptions,
        'instructions': instructions, 'max_entities': max_entities, 'options': options,
        'model': coalesce(model, getvariable('duckllm_model')),
        'cache': getvariable('duckllm_cache')})::VARCHAR);

CREATE OR REPLACE TEMP MACRO llm_classify_multi(text, labels, descriptions := NULL, instructions := NULL,
                                                threshold := NULL, options := NULL, model := NULL) AS
    __duckllm_classify_multi(text::VARCHAR, to_json({'labels': labels, 'descriptions': descriptions,
        'instructions': instructions, 'threshold': threshold, 'options': options,
        'model': coalesce(model, getvariable('duckllm_model')),
        'cache': getvariable('duckllm_cache')})::VARCHAR);

CREATE OR REPLACE TEMP MACRO llm_enrich(text, question, max_tokens := NULL, examples := NULL,
                                        options := NULL, model := NULL) AS
    __duckllm_enrich(text::VARCHAR, to_json({'question': question, 'max_tokens': max_tokens, 'examples': examples,
        'options': options, 'model': coalesce(model, getvariable('duckllm_model')),
        'cache': getvariable('duckllm_cache')})::VARCHAR);

-- Cumulative counters of this process: calls, rows, cache and dedup hits, tokens, seconds, device.
CREATE OR REPLACE TEMP MACRO duckllm_stats() AS TABLE SELECT unnest(__duckllm_stats());
