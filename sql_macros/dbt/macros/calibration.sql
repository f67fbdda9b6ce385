{#- Calibrated confidence from labeled rows, as in SQL (llm_calibrate, llm_thresholds): name the
    function, give the labeled rows and the function's own arguments. The fit is stored for that
    task and model; every later call of it (any model of the project) answers with calibrated
    confidences, so a model that calibrates runs before those that classify (ref it, or run it
    in on-run-start). Once calibrated, a confidence is a probability: abstain / needs_review /
    classify_cascade take a target precision as their number (rows kept at 0.9 or above are
    right at least 9 times in 10), and llm_thresholds gives the cut for a target coverage.
      -- models/ticket_calibration.sql
      {{ duckllm.calibrate('llm_classify', duckllm.labeled_rows(ref('reviewed_tickets'), 'body', 'label'),
                           labels=['refund', 'delivery']) }} -#}
{% macro labeled_rows(relation, input, output) -%}
  (SELECT list({'input': {{ input }}, 'output': {{ output }}}) FROM {{ relation }})
{%- endmacro %}

{% macro calibrate(function, rows, labels=none, schema=none, descriptions=none, instructions=none,
                   examples=none, nearest=none, preselect=none, confidence=none, contextual=none,
                   threshold=none, model=none, options=none, method=none) -%}
  SELECT * FROM llm_calibrate({{ duckllm.literal(function) }}, {{ rows }}{{ duckllm._named({
      'labels': labels, 'schema': schema, 'descriptions': descriptions, 'instructions': instructions,
      'examples': examples, 'nearest': nearest, 'preselect': preselect, 'confidence': confidence,
      'contextual': contextual, 'threshold': threshold, 'model': model, 'options': options,
      'method': method}) }})
{%- endmacro %}

{% macro thresholds(function, rows, labels=none, schema=none, descriptions=none, instructions=none,
                    examples=none, nearest=none, preselect=none, confidence=none, contextual=none,
                    threshold=none, model=none, options=none, precision=none, coverage=none) -%}
  SELECT * FROM llm_thresholds({{ duckllm.literal(function) }}, {{ rows }}{{ duckllm._named({
      'labels': labels, 'schema': schema, 'descriptions': descriptions, 'instructions': instructions,
      'examples': examples, 'nearest': nearest, 'preselect': preselect, 'confidence': confidence,
      'contextual': contextual, 'threshold': threshold, 'model': model, 'options': options,
      'precision': precision, 'coverage': coverage}) }})
{%- endmacro %}
