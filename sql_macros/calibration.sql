-- Calibrated confidence from labeled rows, the same for every function that can be calibrated:
-- name the function, pass the labeled rows in the shape of `examples` and the function's own
-- arguments; the fit is stored for that task and model, and every later call of it answers with
-- calibrated confidences (its note says 'confidence calibrated ...').
--   SELECT * FROM llm_calibrate('llm_classify', (SELECT list({'input': msg, 'output': label}) FROM reviewed),
--                               labels := ['ham', 'spam'])
-- A row's output: llm_classify its label; llm_match yes or no (the input: ['record a', 'record b']);
-- llm_extract a STRUCT of the right field values (NULL: not in the text; one map for all fields,
-- an offset per field); llm_classify_multi the list of labels that apply (P(applies) per label).
-- method := 'auto' (default: the map of the lowest held-out Brier score), 'temperature', 'platt',
-- 'isotonic', 'histogram', 'by_answer', or 'none' to forget the task's calibration.
-- The parameters are those of every function that can be calibrated, so that the macro follows
-- from the functions' declarations.
CREATE OR REPLACE TEMP MACRO llm_calibrate(function, rows, labels := NULL, schema := NULL,
                                           descriptions := NULL, instructions := NULL, examples := NULL,
                                           nearest := NULL, preselect := NULL, confidence := NULL,
                                           contextual := NULL, threshold := NULL, options := NULL,
                                           model := NULL, method := NULL) AS TABLE
    SELECT unnest(__duckllm_calibrate(function, to_json({'rows': rows, 'labels': labels, 'schema': schema,
        'descriptions': descriptions, 'instructions': instructions, 'examples': examples,
        'nearest': nearest, 'preselect': preselect, 'confidence': confidence, 'contextual': contextual,
        'threshold': threshold, 'options': options, 'model': coalesce(model, getvariable('duckllm_model')),
        'method': method, 'cache': getvariable('duckllm_cache')})::VARCHAR), recursive := true);

-- The confidence cut that reaches a target precision (the answers kept are right that share of
-- the time) or coverage (that share of rows answered), with the accuracy and coverage it gives
-- on the labeled rows; cross-fitted when the task is calibrated.
--   SELECT * FROM llm_thresholds('llm_classify', (SELECT list(...) FROM reviewed), labels := [...],
--                                precision := [0.9, 0.95], coverage := 0.8)
CREATE OR REPLACE TEMP MACRO llm_thresholds(function, rows, labels := NULL, schema := NULL,
                                            descriptions := NULL, instructions := NULL, examples := NULL,
                                            nearest := NULL, preselect := NULL, confidence := NULL,
                                            contextual := NULL, threshold := NULL, options := NULL,
                                            model := NULL, precision := NULL, coverage := NULL) AS TABLE
    SELECT unnest(__duckllm_thresholds(function, to_json({'rows': rows, 'labels': labels, 'schema': schema,
        'descriptions': descriptions, 'instructions': instructions, 'examples': examples,
        'nearest': nearest, 'preselect': preselect, 'confidence': confidence, 'contextual': contextual,
        'threshold': threshold, 'options': options, 'model': coalesce(model, getvariable('duckllm_model')),
        'precision': precision, 'coverage': coverage, 'cache': getvariable('duckllm_cache')})::VARCHAR),
        recursive := true);
