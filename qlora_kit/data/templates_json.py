r"""Go's encoding/json, written in Jinja: the macros the tool-capable templates (templates_tools.py) print JSON with,
so training text and Ollama's Go rendering agree byte for byte (see templates_tools.py's docstring for the rules)."""

# Go's encoding/json, in Jinja (transformers' and llama-cpp-python's tojson accept separators and sort_keys).
# `x['items']` is looked up with `in`: Jinja falls back to the dict's .items method for a missing 'items' key.
MACROS = r"""
{%- macro qk_json(v) %}{{- v | tojson(separators=(',', ':'), sort_keys=true) | replace('<', '\\u003c')
    | replace('>', '\\u003e') | replace('&', '\\u0026') | replace('\u2028', '\\u2028')
    | replace('\u2029', '\\u2029') }}{%- endmacro %}
{%- macro qk_prop(p) %}
    {%- set ns = namespace(out='', s='') %}
    {%- if p['anyOf'] %}
        {%- for a in p['anyOf'] %}{%- set ns.s = ns.s + (',' if not loop.first else '') + qk_prop(a) %}{%- endfor %}
        {%- set ns.out = ns.out + ',"anyOf":[' + ns.s + ']' %}
    {%- endif %}
    {%- if p['type'] is string %}{%- set ns.out = ns.out + ',"type":' + qk_json(p['type']) %}
    {%- elif p['type'] and p['type'] | length == 1 %}{%- set ns.out = ns.out + ',"type":' + qk_json(p['type'][0]) %}
    {%- elif p['type'] %}{%- set ns.out = ns.out + ',"type":' + qk_json(p['type']) %}{%- endif %}
    {%- if 'items' in p and p['items'] is not none %}{%- set ns.out = ns.out + ',"items":' + qk_json(p['items']) %}
    {%- endif %}
    {%- if p['description'] %}{%- set ns.out = ns.out + ',"description":' + qk_json(p['description']) %}{%- endif %}
    {%- if p['enum'] %}{%- set ns.out = ns.out + ',"enum":' + qk_json(p['enum']) %}{%- endif %}
    {%- if 'properties' in p and p['properties'] is not none %}
        {%- set ns.s = '' %}
        {%- for k, v in p['properties'].items() %}
            {%- set ns.s = ns.s + (',' if not loop.first else '') + qk_json(k) + ':' + qk_prop(v) %}
        {%- endfor %}
        {%- set ns.out = ns.out + ',"properties":{' + ns.s + '}' %}
    {%- endif %}
    {%- if p['required'] %}{%- set ns.out = ns.out + ',"required":' + qk_json(p['required']) %}{%- endif %}
    {{- '{' + ns.out[1:] + '}' }}
{%- endmacro %}
{%- macro qk_tool(t) %}
    {%- set f = t['function'] or {} %}
    {%- set p = f['parameters'] or {} %}
    {%- set ns = namespace(s='null') %}
    {%- if 'properties' in p and p['properties'] is not none %}
        {%- set ns.s = '' %}
        {%- for k, v in p['properties'] | dictsort(true) %}
            {%- set ns.s = ns.s + (',' if not loop.first else '') + qk_json(k) + ':' + qk_prop(v) %}
        {%- endfor %}
        {%- set ns.s = '{' + ns.s + '}' %}
    {%- endif %}
    {{- '{"type":' + qk_json(t['type'] or '') }}
    {%- if 'items' in t and t['items'] is not none %}{{- ',"items":' + qk_json(t['items']) }}{%- endif %}
    {{- ',"function":{"name":' + qk_json(f['name'] or '') + ',"description":' + qk_json(f['description'] or '')
        + ',"parameters":{"type":' + qk_json(p['type'] or '') }}
    {%- if p['$defs'] is defined and p['$defs'] is not none %}{{- ',"$defs":' + qk_json(p['$defs']) }}{%- endif %}
    {%- if 'items' in p and p['items'] is not none %}{{- ',"items":' + qk_json(p['items']) }}{%- endif %}
    {%- if p['required'] %}{{- ',"required":' + qk_json(p['required']) }}{%- endif %}
    {{- ',"properties":' + ns.s + '}}}' }}
{%- endmacro %}
{%- macro qk_args(call) %}
    {%- set f = call['function'] if call['function'] is defined else call %}
    {%- if f['arguments'] is string %}{{- f['arguments'] }}{%- else %}{{- qk_json(f['arguments'] or {}) }}{%- endif %}
{%- endmacro %}"""
