{#- duckllm's SQL functions as dbt macros. Each renders one llm_* call.
    Generated from the functions' declarations (duckllm/tasks/*.py) by
    `python -m duckllm.sql.dbt_macros`: change those, not this file.

    text, a, b: SQL expressions (a column name, usually), as in dbt_utils.
    labels, types: a Jinja list, rendered as a SQL list literal; a string is taken as SQL.
    Everything else (descriptions, instructions, examples, options, model, ...): a Jinja value,
    rendered as a SQL literal (a dict becomes a STRUCT, a list a LIST); none leaves it out.
    schema: a dict of field name to DuckDB type, e.g. {'brand': 'VARCHAR', 'capacity_gb': 'INTEGER'}.

      {{ duckllm.classify('body', ['refund', 'delivery'],
                          descriptions={'refund': 'wants money back'}) }} AS result
-#}

{% macro literal(value) -%}
  {%- if value is none -%}NULL
  {%- elif value is sameas true -%}true
  {%- elif value is sameas false -%}false
  {%- elif value is number -%}{{ value }}
  {%- elif value is string -%}'{{ value | replace("'", "''") }}'
  {%- elif value is mapping -%}
    {%- if value | length == 0 -%}NULL{%- else -%}
    {{ '{' }}{%- for key, item in value.items() -%}
      {{ duckllm.literal(key | string) }}: {{ duckllm.literal(item) }}{{ ', ' if not loop.last }}
    {%- endfor -%}{{ '}' }}
    {%- endif -%}
  {%- elif value is iterable -%}
    [{%- for item in value -%}{{ duckllm.literal(item) }}{{ ', ' if not loop.last }}{%- endfor -%}]
  {%- else -%}
    {{ exceptions.raise_compiler_error("duckllm.literal: cannot write " ~ value ~ " as SQL") }}
  {%- endif -%}
{%- endmacro %}

{#- a list argument: a Jinja list as a literal, a string as SQL -#}
{% macro _list(value) -%}
  {%- if value is string -%}{{ value }}{%- else -%}{{ duckllm.literal(value) }}{%- endif -%}
{%- endmacro %}

{#- the named parameters that are not none: ", name := literal" each -#}
{% macro _named(named) -%}
  {%- for name, value in named.items() if value is not none -%}, {{ name }} := {{ duckllm.literal(value) }}{%- endfor -%}
{%- endmacro %}

{#- llm_classify -> STRUCT(label VARCHAR, confidence DOUBLE, note VARCHAR, answered_by VARCHAR)
    text VARCHAR, labels VARCHAR[], descriptions STRUCT, instructions VARCHAR,
    examples STRUCT(input VARCHAR, output VARCHAR)[], nearest INTEGER, preselect INTEGER, confidence VARCHAR,
    contextual BOOLEAN, agreement DOUBLE, agreement_confidence DOUBLE, model VARCHAR, options STRUCT -#}
{% macro classify(text, labels, descriptions=none, instructions=none, examples=none, nearest=none,
                  preselect=none, confidence=none, contextual=none, agreement=none, agreement_confidence=none,
                  model=none, options=none) -%}
  llm_classify({{ text }}, {{ duckllm._list(labels) }}{{ duckllm._named({
      'descriptions': descriptions, 'instructions': instructions, 'examples': examples, 'nearest': nearest,
      'preselect': preselect, 'confidence': confidence, 'contextual': contextual, 'agreement': agreement,
      'agreement_confidence': agreement_confidence, 'model': model, 'options': options}) }})
{%- endmacro %}

{#- llm_classify_multi -> STRUCT(label VARCHAR, confidence DOUBLE)[]
    text VARCHAR, labels VARCHAR[], descriptions STRUCT, instructions VARCHAR, threshold DOUBLE,
    model VARCHAR, options STRUCT -#}
{% macro classify_multi(text, labels, descriptions=none, instructions=none, threshold=none, model=none,
                        options=none) -%}
  llm_classify_multi({{ text }}, {{ duckllm._list(labels) }}{{ duckllm._named({
      'descriptions': descriptions, 'instructions': instructions, 'threshold': threshold, 'model': model,
      'options': options}) }})
{%- endmacro %}

{#- llm_clean -> STRUCT(value VARCHAR, confidence DOUBLE, changed BOOLEAN, note VARCHAR)
    text VARCHAR, instructions VARCHAR, examples STRUCT(input VARCHAR, output VARCHAR)[], model VARCHAR,
    options STRUCT -#}
{% macro clean(text, instructions=none, examples=none, model=none, options=none) -%}
  llm_clean({{ text }}{{ duckllm._named({
      'instructions': instructions, 'examples': examples, 'model': model, 'options': options}) }})
{%- endmacro %}

{#- llm_match -> STRUCT(match BOOLEAN, confidence DOUBLE, note VARCHAR, answered_by VARCHAR)
    a VARCHAR, b VARCHAR, instructions VARCHAR, examples STRUCT(input VARCHAR, output VARCHAR)[],
    agreement DOUBLE, agreement_confidence DOUBLE, model VARCHAR, options STRUCT -#}
{% macro match(a, b, instructions=none, examples=none, agreement=none, agreement_confidence=none, model=none,
               options=none) -%}
  llm_match({{ a }}, {{ b }}{{ duckllm._named({
      'instructions': instructions, 'examples': examples, 'agreement': agreement,
      'agreement_confidence': agreement_confidence, 'model': model, 'options': options}) }})
{%- endmacro %}

{#- llm_extract -> STRUCT(<the schema's fields>, confidence STRUCT(<field> DOUBLE, ...), note VARCHAR)
    text VARCHAR, schema STRUCT, instructions VARCHAR, model VARCHAR, options STRUCT -#}
{% macro extract(text, schema, instructions=none, model=none, options=none) -%}
  llm_extract({{ text }}, {{ duckllm.literal(schema) }}{{ duckllm._named({
      'instructions': instructions, 'model': model, 'options': options}) }})
{%- endmacro %}

{#- llm_entities -> STRUCT(text VARCHAR, type VARCHAR, confidence DOUBLE)[]
    text VARCHAR, types VARCHAR[], descriptions STRUCT, instructions VARCHAR, max_entities INTEGER,
    model VARCHAR, options STRUCT -#}
{% macro entities(text, types=none, descriptions=none, instructions=none, max_entities=none, model=none,
                  options=none) -%}
  llm_entities({{ text }}{% if types is not none %}, types := {{ duckllm._list(types) }}{% endif %}{{ duckllm._named({
      'descriptions': descriptions, 'instructions': instructions, 'max_entities': max_entities,
      'model': model, 'options': options}) }})
{%- endmacro %}

{#- llm_enrich -> STRUCT(value VARCHAR, confidence DOUBLE, truncated BOOLEAN, note VARCHAR)
    text VARCHAR, question VARCHAR, max_tokens INTEGER, examples STRUCT(input VARCHAR, output VARCHAR)[],
    model VARCHAR, options STRUCT -#}
{% macro enrich(text, question, max_tokens=none, examples=none, model=none, options=none) -%}
  llm_enrich({{ text }}, {{ duckllm.literal(question) }}{{ duckllm._named({
      'max_tokens': max_tokens, 'examples': examples, 'model': model, 'options': options}) }})
{%- endmacro %}
