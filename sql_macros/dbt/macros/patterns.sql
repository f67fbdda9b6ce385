{#- The abstain / review / cascade patterns, and duckllm's counters, as dbt macros. -#}

{#- Abstain in one call: the label when the model is at least min_confidence sure, else NULL. -#}
{% macro label_or_null(text, labels, min_confidence, descriptions=none, model=none) -%}
  llm_label_or_null({{ text }}, {{ duckllm._list(labels) }}, {{ min_confidence }}{{ duckllm._named({
      'descriptions': descriptions, 'model': model}) }})
{%- endmacro %}

{#- Abstain on a result already computed: value when confidence >= min_confidence, else NULL.
    value and confidence are SQL expressions, e.g. 'label', 'confidence' or '(result).label'. -#}
{% macro abstain(value, confidence, min_confidence) -%}
  CASE WHEN {{ confidence }} >= {{ min_confidence }} THEN {{ value }} END
{%- endmacro %}

{#- True for a row a person should check: no confident answer (below threshold, or none). -#}
{% macro needs_review(confidence, threshold=0.7) -%}
  (coalesce({{ confidence }}, 0) < {{ threshold }})
{%- endmacro %}

{#- The review queue: a relation's rows below threshold (or with no confidence), least confident
    first. A whole query: select from it, or use it as a model's body.
      {{ duckllm.review_queue(ref('classified_tickets'), 'confidence', threshold=0.8) }} -#}
{% macro review_queue(relation, confidence='confidence', threshold=0.7) -%}
  SELECT * FROM {{ relation }}
  WHERE {{ duckllm.needs_review(confidence, threshold) }}
  ORDER BY {{ confidence }} NULLS FIRST
{%- endmacro %}

{#- A confidence cascade: the small model answers; rows it is less than `below` sure of go to
    the strong model. -#}
{% macro classify_cascade(text, labels, small, strong, below=0.9, descriptions=none) -%}
  llm_classify_cascade({{ text }}, {{ duckllm._list(labels) }}, {{ duckllm.literal(small) }},
                       {{ duckllm.literal(strong) }}, below := {{ below }}{{ duckllm._named({
      'descriptions': descriptions}) }})
{%- endmacro %}

{#- duckllm's counters in this dbt process, as a query: calls, rows, cache_hits, dedup_hits,
    model_rows, prompt_tokens, generated_tokens, seconds, device. -#}
{% macro stats() -%}
  SELECT * FROM duckllm_stats()
{%- endmacro %}

{#- For on-run-end: logs one line of the counters of this dbt invocation, e.g.
    "duckllm: 12 rows, 0 answered by the model, 11 from the cache, 1 deduplicated; 0.0 s on cpu".
      on-run-end: ["{{ duckllm.log_stats() }}"] -#}
{% macro log_stats() -%}
  {%- if execute -%}
    {%- set row = run_query(duckllm.stats()).rows[0] -%}
    {%- do log("duckllm: " ~ row['rows'] ~ " rows, " ~ row['model_rows'] ~ " answered by the model, "
               ~ row['cache_hits'] ~ " from the cache, " ~ row['dedup_hits'] ~ " deduplicated; "
               ~ "%.1f" | format(row['seconds']) ~ " s on " ~ row['device'], info=true) -%}
  {%- endif -%}
{%- endmacro %}
