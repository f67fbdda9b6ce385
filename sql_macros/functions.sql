-- The SQL face of duckllm's functions. Each macro packs its arguments, named parameters and
-- options STRUCT into one JSON object for the Python UDF behind it, so arguments of any shape
-- reach one validator with messages of our own. The model defaults to the connection's
-- variable duckllm_model (SET VARIABLE duckllm_model = 'qwen2.5-coder-0.5b'), else the catalog's.
-- TEMP: the macros live with the connection and are never written into a database file.

CREATE OR REPLACE TEMP MACRO llm_classify(text, labels, options := NULL, descriptions := NULL,
                                          instructions := NULL, model := NULL, confidence := NULL) AS
    __duckllm_classify(text, to_json({'labels': labels, 'options': options,
        'descriptions': descriptions, 'instructions': instructions,
        'model': coalesce(model, getvariable('duckllm_model')), 'confidence': confidence})::VARCHAR);

CREATE OR REPLACE TEMP MACRO llm_clean(text, instructions := NULL, options := NULL, model := NULL) AS
    __duckllm_clean(text, to_json({'instructions': instructions, 'options': options,
        'model': coalesce(model, getvariable('duckllm_model'))})::VARCHAR);
