{#- Generic data tests for the functions' outputs. A test fails on the rows it selects. -#}

{#- Every non-NULL confidence lies in [min_value, max_value].
      columns: - name: confidence
                 data_tests: [duckllm.confidence_between]   -#}
{% test confidence_between(model, column_name, min_value=0, max_value=1) %}
  SELECT * FROM {{ model }}
  WHERE {{ column_name }} IS NOT NULL
    AND NOT ({{ column_name }} BETWEEN {{ min_value }} AND {{ max_value }})
{% endtest %}

{#- Rows the model is less than threshold sure of. Usually with a tolerance:
      - duckllm.min_confidence: {threshold: 0.8, config: {severity: warn}}
      - duckllm.min_confidence: {threshold: 0.5, config: {error_if: ">2"}}   -#}
{% test min_confidence(model, column_name, threshold) %}
  SELECT * FROM {{ model }}
  WHERE {{ column_name }} < {{ threshold }}
{% endtest %}
