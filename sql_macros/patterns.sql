-- Patterns over the functions' results: abstain, review, cascade.

-- The label when the model is at least min_confidence sure of it, else NULL (abstain).
CREATE OR REPLACE TEMP MACRO llm_label_or_null(text, labels, min_confidence, descriptions := NULL,
                                               model := NULL) AS
    CASE WHEN (llm_classify(text, labels, descriptions := descriptions, model := model)).confidence
              >= min_confidence
         THEN (llm_classify(text, labels, descriptions := descriptions, model := model)).label END;

-- A confidence cascade: the small model answers; rows it is less than `below` sure of go to the
-- strong model. DuckDB evaluates the ELSE branch only for the rows that reach it, and the small
-- model's second mention is answered from the result cache (or dedup) rather than recomputed.
CREATE OR REPLACE TEMP MACRO llm_classify_cascade(text, labels, small, strong, below := 0.9,
                                                  descriptions := NULL) AS
    CASE WHEN (llm_classify(text, labels, descriptions := descriptions, model := small)).confidence >= below
         THEN llm_classify(text, labels, descriptions := descriptions, model := small)
         ELSE llm_classify(text, labels, descriptions := descriptions, model := strong) END;

-- The review queue: rows of a table whose result column (a STRUCT with a confidence) is below
-- the threshold or has no answer, least confident first.
--   SELECT * FROM llm_review_queue('labeled_tickets', 'result', threshold := 0.8)
CREATE OR REPLACE TEMP MACRO llm_review_queue(table_name, result_column, threshold := 0.7) AS TABLE
    SELECT * FROM query_table(table_name)
    WHERE coalesce(struct_extract(COLUMNS(lambda c: c = result_column), 'confidence'), 0) < threshold
    ORDER BY struct_extract(COLUMNS(lambda c: c = result_column), 'confidence') NULLS FIRST;
