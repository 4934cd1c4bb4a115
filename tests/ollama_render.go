// Renders chat templates with Go's text/template on the data Ollama builds (template/template.go: collate,
// convertMessagesForTemplate, convertToolsForTemplate; the types trimmed from api/types.go), to check
// tests/go_template.py against real Go. Standard library only: built offline by go_template.go_renderer.
// stdin: [{"template", "system", "messages" (Ollama's api.Message JSON), "tools" (OpenAI tool dicts)}]
// stdout: the rendered texts, as a JSON list.
package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type PropertyType []string

func (pt *PropertyType) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err == nil {
		*pt = []string{s}
		return nil
	}
	var a []string
	if err := json.Unmarshal(data, &a); err != nil {
		return err
	}
	*pt = a
	return nil
}

func (pt PropertyType) MarshalJSON() ([]byte, error) {
	if len(pt) == 1 {
		return json.Marshal(pt[0])
	}
	return json.Marshal([]string(pt))
}

type ToolProperty struct {
	AnyOf       []ToolProperty `json:"anyOf,omitempty"`
	Type        PropertyType   `json:"type,omitempty"`
	Items       any            `json:"items,omitempty"`
	Description string         `json:"description,omitempty"`
	Enum        []any          `json:"enum,omitempty"`
	Properties  *OrderedProps  `json:"properties,omitempty"`
	Required    []string       `json:"required,omitempty"`
}

// OrderedProps stands for api.ToolPropertiesMap, an insertion-ordered map.
type OrderedProps struct {
	keys   []string
	values map[string]ToolProperty
}

func (o *OrderedProps) UnmarshalJSON(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if _, err := dec.Token(); err != nil {
		return err
	}
	o.values = map[string]ToolProperty{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		var p ToolProperty
		if err := dec.Decode(&p); err != nil {
			return err
		}
		if _, seen := o.values[tok.(string)]; !seen {
			o.keys = append(o.keys, tok.(string))
		}
		o.values[tok.(string)] = p
	}
	return nil
}

func (o OrderedProps) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, k := range o.keys {
		if i > 0 {
			b.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		vb, err := json.Marshal(o.values[k])
		if err != nil {
			return nil, err
		}
		b.Write(kb)
		b.WriteByte(':')
		b.Write(vb)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

type Tool struct {
	Type     string `json:"type"`
	Items    any    `json:"items,omitempty"`
	Function struct {
		Name        string `json:"name"`
		Description string `json:"description,omitempty"`
		Parameters  struct {
			Type       string        `json:"type"`
			Defs       any           `json:"$defs,omitempty"`
			Items      any           `json:"items,omitempty"`
			Required   []string      `json:"required,omitempty"`
			Properties *OrderedProps `json:"properties"`
		} `json:"parameters"`
	} `json:"function"`
}

type Message struct {
	Role      string `json:"role"`
	Content   string `json:"content"`
	Thinking  string `json:"thinking,omitempty"`
	ToolCalls []struct {
		ID       string `json:"id,omitempty"`
		Function struct {
			Index     int            `json:"index"`
			Name      string         `json:"name"`
			Arguments map[string]any `json:"arguments"`
		} `json:"function"`
	} `json:"tool_calls,omitempty"`
	ToolName   string `json:"tool_name,omitempty"`
	ToolCallID string `json:"tool_call_id,omitempty"`
}

// The template-side types of template/template.go.
type templateTools []templateTool

func (t templateTools) String() string { b, _ := json.Marshal(t); return string(b) }

type templateArgs map[string]any

func (t templateArgs) String() string {
	if t == nil {
		return "{}"
	}
	b, _ := json.Marshal(t)
	return string(b)
}

type templateTool struct {
	Type     string               `json:"type"`
	Items    any                  `json:"items,omitempty"`
	Function templateToolFunction `json:"function"`
}

func (t templateTool) String() string { b, _ := json.Marshal(t); return string(b) }

type templateToolFunction struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Parameters  struct {
		Type       string                  `json:"type"`
		Defs       any                     `json:"$defs,omitempty"`
		Items      any                     `json:"items,omitempty"`
		Required   []string                `json:"required,omitempty"`
		Properties map[string]ToolProperty `json:"properties"`
	} `json:"parameters"`
}

type templateToolCall struct {
	ID       string
	Function struct {
		Index     int
		Name      string
		Arguments templateArgs
	}
}

type templateMessage struct {
	Role, Content, Thinking string
	ToolCalls               []templateToolCall
	ToolName, ToolCallID    string
}

type Case struct {
	Template string    `json:"template"`
	System   string    `json:"system"`
	Messages []Message `json:"messages"`
	Tools    []Tool    `json:"tools"`
}

func render(c Case) string {
	msgs := c.Messages
	if c.System != "" && (len(msgs) == 0 || msgs[0].Role != "system") { // the Modelfile SYSTEM (server/routes.go)
		msgs = append([]Message{{Role: "system", Content: c.System}}, msgs...)
	}
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	messages := []*templateMessage{}
	for _, m := range collated {
		tm := &templateMessage{Role: m.Role, Content: m.Content, Thinking: m.Thinking, ToolName: m.ToolName,
			ToolCallID: m.ToolCallID}
		for _, tc := range m.ToolCalls {
			var call templateToolCall
			call.ID, call.Function.Index, call.Function.Name = tc.ID, tc.Function.Index, tc.Function.Name
			call.Function.Arguments = templateArgs(tc.Function.Arguments)
			tm.ToolCalls = append(tm.ToolCalls, call)
		}
		messages = append(messages, tm)
	}
	var tools templateTools
	for _, t := range c.Tools {
		tt := templateTool{Type: t.Type, Items: t.Items}
		tt.Function.Name, tt.Function.Description = t.Function.Name, t.Function.Description
		p := t.Function.Parameters
		tt.Function.Parameters.Type, tt.Function.Parameters.Defs = p.Type, p.Defs
		tt.Function.Parameters.Items, tt.Function.Parameters.Required = p.Items, p.Required
		if p.Properties != nil {
			tt.Function.Parameters.Properties = p.Properties.values
		}
		tools = append(tools, tt)
	}
	funcs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
	tmpl := template.Must(template.New("").Option("missingkey=zero").Funcs(funcs).Parse(c.Template))
	var b strings.Builder
	err := tmpl.Execute(&b, map[string]any{"System": strings.Join(system, "\n\n"), "Messages": messages,
		"Tools": tools, "Response": "", "Think": false, "ThinkLevel": "", "IsThinkSet": false})
	if err != nil {
		panic(err)
	}
	return b.String()
}

func main() {
	var cases []Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	out := []string{}
	for _, c := range cases {
		out = append(out, render(c))
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
