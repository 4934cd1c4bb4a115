"""Regenerate tool_calls_train.jsonl and tool_calls_eval.jsonl, the function-calling task (issue #27).

    python qlora_kit/assets/build_tool_calls.py qlora_kit/assets

OpenAI's chat fine-tuning format with tool calling, one row a line: {"messages": [...], "tools": [...]}. The same
four tools in every row: get_weather(city, unit?: celsius|fahrenheit), get_local_time(city),
convert_currency(amount, from_currency, to_currency), set_timer(minutes). The assistant message that calls a tool
has `tool_calls` and no `content` (as in OpenAI's documented example), each call's `arguments` a JSON string.
Three kinds of row, to teach what to call, with what, and when not to:
  one call (70%)            user -> assistant tool_calls
  call, result, answer (20%) user -> assistant tool_calls -> tool (tool_call_id, a JSON result) -> assistant answer
  no tool (10%)             user -> assistant answer (questions near the tools: boiling points, what USD means)
160 training rows and 48 held-out rows. No held-out argument value is a training one (cities, amounts, currency
codes, minutes; only the unit enum is shared), and no held-out no-tool question is a training one, so a right
held-out call is the model reading the request, not recalling a row; main() asserts it. User requests come from
several phrasings per tool. Call ids are 9 alphanumerics ("call01234"): Mistral's chat template rejects any other.
Deterministic (fixed lists, fixed seed): the files are committed, this records how.
"""

import json
import random
import sys
from pathlib import Path

TRAIN_ROWS, EVAL_ROWS, SEED = 160, 48, 27
# (no-tool rows, call-result-answer rows) per split; the rest are single calls
MIX = {"train": (16, 32), "eval": (5, 10)}
SHARED_VALUES = {"unit"}  # enum arguments: necessarily the same values in both splits


def _fn(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


CITY = {"type": "string", "description": "City name, e.g. Paris"}
TOOLS = [
    _fn("get_weather", "Get the current weather in a city",
        {"city": CITY, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ["city"]),
    _fn("get_local_time", "Get the current local time in a city", {"city": CITY}, ["city"]),
    _fn("convert_currency", "Convert an amount of money from one currency to another",
        {"amount": {"type": "number"}, "from_currency": {"type": "string", "description": "ISO 4217 code, e.g. USD"},
         "to_currency": {"type": "string", "description": "ISO 4217 code, e.g. EUR"}},
        ["amount", "from_currency", "to_currency"]),
    _fn("set_timer", "Start a countdown timer", {"minutes": {"type": "integer"}}, ["minutes"]),
]
CITIES = ["Paris", "Rome", "Madrid", "Berlin", "Tokyo", "Cairo", "Lima", "Nairobi", "Oslo", "Santiago", "Ottawa",
          "Athens", "Warsaw", "Lisbon", "Vienna", "Stockholm", "Helsinki", "Dublin", "Beijing", "Bangkok", "Havana",
          "Budapest", "Copenhagen", "Brussels", "Buenos Aires", "Mexico City", "Seoul", "Hanoi", "Jakarta", "Ankara",
          "Bogota", "Prague", "Bucharest", "Manila", "Wellington", "Amsterdam", "Reykjavik", "Sofia", "Zagreb",
          "Dhaka", "Kathmandu", "Accra", "Dakar", "Montevideo", "Quito", "New York", "Chicago", "Toronto", "Sydney",
          "Mumbai", "Istanbul", "Cape Town", "Singapore", "Rio de Janeiro", "Marrakesh", "Edinburgh"]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "CNY", "INR", "MXN", "BRL", "SEK", "NOK", "DKK",
              "PLN", "KRW", "SGD", "HKD", "NZD", "ZAR"]
# Plain questions (some near a tool's subject, to teach when not to call one) and their answers.
NO_TOOL = [("What is 12 times 12?", "12 times 12 is 144."),
           ("What's the capital of Japan?", "The capital of Japan is Tokyo."),
           ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
           ("What does a thermometer measure?", "A thermometer measures temperature."),
           ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
           ("What is the boiling point of water in Celsius?", "Water boils at 100 °C at sea level."),
           ("What currency does Japan use?", "Japan uses the yen (JPY)."),
           ("How many seconds are in 5 minutes?", "There are 300 seconds in 5 minutes."),
           ("What time zone is London in?", "London is on Greenwich Mean Time, and British Summer Time in summer."),
           ("Say hello in French.", "Hello in French is \"bonjour\"."),
           ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
           ("Which is colder, 0 °F or 0 °C?", "0 °F is colder: it is about -18 °C."),
           ("What does USD stand for?", "USD stands for United States dollar."),
           ("How many days are in a leap year?", "A leap year has 366 days."),
           ("Thanks for your help!", "You're welcome! Let me know if you need anything else."),
           ("What color do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
           ("How many hours are in a week?", "There are 168 hours in a week."),
           ("What is the freezing point of water in Fahrenheit?", "Water freezes at 32 °F."),
           ("Hi there!", "Hello! I can check the weather or the local time, convert currencies and set timers."),
           ("Why is the sky blue?", "Air scatters blue sunlight more than red, so the sky looks blue."),
           ("What is the opposite of hot?", "The opposite of hot is cold.")]
PHRASES = {
    "get_weather": ["What's the weather like in {city}?", "How's the weather in {city} today?",
                    "Is it raining in {city} right now?", "weather {city}", "Can you check the weather in {city}?",
                    "I'm flying to {city} tomorrow. What's the weather there?", "Tell me the weather for {city}."],
    "get_weather+unit": ["What's the temperature in {city} in {unit}?", "Weather in {city}, please, in {unit}.",
                         "How warm is it in {city}? Give it to me in {unit}.", "{city} weather in {unit}"],
    "get_local_time": ["What time is it in {city}?", "What's the local time in {city}?",
                       "Do you know the current time in {city}?", "time in {city}?",
                       "I need to call a friend in {city}. What time is it there?"],
    "convert_currency": ["Convert {amount} {src} to {dst}.", "How much is {amount} {src} in {dst}?",
                         "What's {amount} {src} worth in {dst}?", "I have {amount} {src}. How many {dst} is that?",
                         "{amount} {src} to {dst}", "Please convert {amount} {src} into {dst}."],
    "set_timer": ["Set a timer for {minutes} minutes.", "Start a {minutes}-minute timer.",
                  "Remind me in {minutes} minutes.", "timer {minutes} min",
                  "Can you set a {minutes} minute timer for the pasta?", "Count down {minutes} minutes for me."],
}
CONDITIONS = ["sunny", "cloudy", "raining", "windy", "snowing", "foggy", "clear"]


def pools(rng: random.Random) -> dict[str, tuple[list, list]]:
    """(training values, held-out values) per argument kind, disjoint. Amounts start at 100 and minutes stop at
    90, so no number is both."""
    amounts = list(range(100, 2000, 5)) + [v + 0.5 for v in range(100, 500, 7)]
    out = {}
    for kind, values, n_eval in (("city", CITIES, 14), ("currency", CURRENCIES, 6),
                                 ("amount", amounts, 60), ("minutes", list(range(2, 91)), 20)):
        values = list(values)
        rng.shuffle(values)
        out[kind] = (values[n_eval:], values[:n_eval])
    return out


def call_args(tool: str, rng: random.Random, pool: dict[str, list]) -> tuple[dict, str]:
    """(arguments, the user's request) for one call."""
    if tool == "get_weather":
        args = {"city": rng.choice(pool["city"])}
        if rng.random() < 0.4:
            args["unit"] = rng.choice(["celsius", "fahrenheit"])
            return args, rng.choice(PHRASES["get_weather+unit"]).format(city=args["city"], unit=args["unit"].title())
        return args, rng.choice(PHRASES[tool]).format(city=args["city"])
    if tool == "get_local_time":
        args = {"city": rng.choice(pool["city"])}
        return args, rng.choice(PHRASES[tool]).format(city=args["city"])
    if tool == "convert_currency":
        src, dst = rng.sample(pool["currency"], 2)
        args = {"amount": rng.choice(pool["amount"]), "from_currency": src, "to_currency": dst}
        return args, rng.choice(PHRASES[tool]).format(amount=args["amount"], src=src, dst=dst)
    args = {"minutes": rng.choice(pool["minutes"])}
    return args, rng.choice(PHRASES[tool]).format(minutes=args["minutes"])


def result_and_answer(tool: str, args: dict, rng: random.Random) -> tuple[dict, str]:
    """A plausible tool result and the assistant's answer from it."""
    if tool == "get_weather":
        celsius, conditions = rng.randint(-5, 32), rng.choice(CONDITIONS)
        unit = args.get("unit", "celsius")
        temp = celsius if unit == "celsius" else round(celsius * 9 / 5 + 32)
        result = {"city": args["city"], "temperature": temp, "unit": unit, "conditions": conditions}
        return result, f"It's {temp} °{unit[0].upper()} and {conditions} in {args['city']}."
    if tool == "get_local_time":
        time = f"{rng.randrange(24):02d}:{rng.randrange(60):02d}"
        return {"city": args["city"], "time": time}, f"It's {time} in {args['city']} right now."
    if tool == "convert_currency":
        converted = round(args["amount"] * rng.uniform(0.05, 20), 2)
        return ({**args, "converted": converted},
                f"{args['amount']} {args['from_currency']} is about {converted} {args['to_currency']}.")
    return {"status": "running", "minutes": args["minutes"]}, f"Done: your {args['minutes']}-minute timer is running."


def rows(split: str, n: int, rng: random.Random, pool: dict[str, list], plain: list[tuple[str, str]]) -> list[dict]:
    n_plain, n_result = MIX[split]
    kinds = ["plain"] * n_plain + ["result"] * n_result + ["call"] * (n - n_plain - n_result)
    out = []
    for i, kind in enumerate(kinds):
        if kind == "plain":
            question, answer = plain[i % len(plain)]
            out.append({"messages": [{"role": "user", "content": question},
                                     {"role": "assistant", "content": answer}], "tools": TOOLS})
            continue
        tool = TOOLS[i % len(TOOLS)]["function"]["name"]  # the tools in equal shares
        args, request = call_args(tool, rng, pool)
        call_id = f"call{rng.randrange(10 ** 5):05d}"
        messages = [{"role": "user", "content": request},
                    {"role": "assistant", "tool_calls": [{"id": call_id, "type": "function", "function": {
                        "name": tool, "arguments": json.dumps(args)}}]}]
        if kind == "result":
            result, answer = result_and_answer(tool, args, rng)
            messages += [{"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)},
                         {"role": "assistant", "content": answer}]
        out.append({"messages": messages, "tools": TOOLS})
    rng.shuffle(out)
    return out


def argument_values(part: list[dict]) -> set:
    return {value for row in part for m in row["messages"] for call in m.get("tool_calls", [])
            for key, value in json.loads(call["function"]["arguments"]).items() if key not in SHARED_VALUES}


def main(out: Path) -> None:
    rng = random.Random(SEED)
    split_pools = pools(rng)
    plain = list(NO_TOOL)
    rng.shuffle(plain)
    held_out_plain = plain[:MIX["eval"][0]]
    train = rows("train", TRAIN_ROWS, rng, {k: v[0] for k, v in split_pools.items()}, plain[MIX["eval"][0]:])
    held_out = rows("eval", EVAL_ROWS, rng, {k: v[1] for k, v in split_pools.items()}, held_out_plain)
    assert not argument_values(train) & argument_values(held_out)
    questions = [{r["messages"][0]["content"] for r in part} for part in (train, held_out)]
    assert not questions[0] & questions[1]
    for name, part in (("tool_calls_train.jsonl", train), ("tool_calls_eval.jsonl", held_out)):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent))
