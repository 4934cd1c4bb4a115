"""OpenAI's cookbook notebook "How to fine-tune chat models", run against `qlora-kit server`.

The flow and the calls are the notebook's, written against the official `openai` client; the only change is where
the client points: `OpenAI(base_url="http://127.0.0.1:PORT/v1", api_key=TOKEN)`. It prepares recipe -> generic
ingredients conversations (a few RecipeNLG-style rows inline instead of the notebook's 10k-row CSV), writes them
as JSONL, uploads the training and validation files, creates a job on `gpt-4o-mini-2024-07-18` with a suffix,
polls the job until it ends (printing each new event), lists its checkpoints, downloads the results CSV and asks
the fine-tuned model to extract the ingredients of a recipe it has not seen, plain and streamed.

Start a server whose model table maps OpenAI's model name to a small recipe (here the built-in tiny random
Llama, so the whole run takes a minute or two on a laptop CPU and answers gibberish; point the entry at e.g.
recipes/qwen2.5-0.5b-instruct.yaml for answers that make sense):

    mkdir -p /tmp/qk && cd /tmp/qk
    cat > tiny.yaml <<'EOF'
    model: {name: "builtin:tiny-llama", max_seq_length: 512, backend: hf}
    data: {chat_template: chatml}
    train: {max_steps: 30, lr: 3.0e-3, batch_size: 4, logging_steps: 5, save_steps: 10}
    export: {quant: [q8_0]}
    EOF
    echo 'gpt-4o-mini-2024-07-18: {recipe: tiny.yaml}' > models.yaml
    python -c 'import secrets; print(secrets.token_urlsafe(32))' > token
    qlora-kit server --root /tmp/qk/root --token-file /tmp/qk/token --models /tmp/qk/models.yaml --port 8765

then, in another shell (the JSONL files and the results CSV are written to the current directory):

    QLORA_KIT_PORT=8765 QLORA_KIT_TOKEN=$(cat /tmp/qk/token) python examples/openai_finetune.py
    python examples/openai_finetune.py --port 8765 --token "$(cat /tmp/qk/token)"    # the same

A server without --token-file takes any key. The exit status is 0 when the job succeeded and the model answered.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pprint import pprint

from openai import OpenAI

MODEL = "gpt-4o-mini-2024-07-18"
FINAL = ("succeeded", "failed", "cancelled")

# RecipeNLG-style rows (title, ingredients as listed, generic ingredients = the NER column), written for this
# example; the notebook reads 10,000 of them from data/cookbook_recipes_nlg_10k.csv.
RECIPES = [
    ("Lemon Bars", ["2 c. flour", "1 c. butter, softened", "4 eggs", "2 c. sugar", "1/3 c. lemon juice"],
     ["flour", "butter", "eggs", "sugar", "lemon juice"]),
    ("Baked Beans", ["2 (16 oz.) cans pork and beans", "1/2 c. brown sugar", "1 small onion, chopped",
                     "2 Tbsp. mustard"], ["pork and beans", "brown sugar", "onion", "mustard"]),
    ("Easy Fudge", ["3 c. chocolate chips", "1 can sweetened condensed milk", "1 tsp. vanilla"],
     ["chocolate chips", "sweetened condensed milk", "vanilla"]),
    ("Cheese Ball", ["2 (8 oz.) pkg. cream cheese", "1 c. shredded Cheddar", "1/2 c. chopped pecans"],
     ["cream cheese", "Cheddar", "pecans"]),
    ("Potato Soup", ["4 potatoes, diced", "1 onion, chopped", "2 c. milk", "2 Tbsp. butter", "salt and pepper"],
     ["potatoes", "onion", "milk", "butter", "salt"]),
    ("Chicken Casserole", ["4 chicken breasts, cooked", "1 can cream of chicken soup", "1 c. sour cream",
                           "1 stack Ritz crackers"], ["chicken breasts", "cream of chicken soup", "sour cream",
                                                     "Ritz crackers"]),
    ("Banana Bread", ["3 ripe bananas, mashed", "1/3 c. melted butter", "1 c. sugar", "1 egg", "1 1/2 c. flour"],
     ["bananas", "butter", "sugar", "egg", "flour"]),
    ("Cole Slaw", ["1 head cabbage, shredded", "1 carrot, grated", "3/4 c. mayonnaise", "2 Tbsp. vinegar"],
     ["cabbage", "carrot", "mayonnaise", "vinegar"]),
    ("Peanut Butter Cookies", ["1 c. peanut butter", "1 c. sugar", "1 egg"], ["peanut butter", "sugar", "egg"]),
    ("Taco Dip", ["1 (16 oz.) can refried beans", "1 c. sour cream", "1 c. salsa", "2 c. shredded cheese"],
     ["refried beans", "sour cream", "salsa", "cheese"]),
    ("Corn Bread", ["1 c. cornmeal", "1 c. flour", "1/4 c. sugar", "1 c. buttermilk", "1 egg"],
     ["cornmeal", "flour", "sugar", "buttermilk", "egg"]),
    ("Fruit Salad", ["1 (20 oz.) can pineapple chunks", "2 oranges, sectioned", "1 c. grapes", "2 bananas, sliced"],
     ["pineapple chunks", "oranges", "grapes", "bananas"]),
    ("Rice Pudding", ["1 c. cooked rice", "2 c. milk", "1/3 c. sugar", "1/2 tsp. cinnamon"],
     ["rice", "milk", "sugar", "cinnamon"]),
    ("Green Bean Casserole", ["2 (14 oz.) cans green beans", "1 can cream of mushroom soup",
                              "1 (3 oz.) can French fried onions"],
     ["green beans", "cream of mushroom soup", "French fried onions"]),
    ("Beef Brisket", ["4 lb. beef brisket", "1 c. catsup", "1/2 onion, minced", "2 Tbsp. cider vinegar"],
     ["beef brisket", "catsup", "onion", "cider vinegar"]),
]
recipe_rows = [{"title": t, "ingredients": json.dumps(i), "NER": json.dumps(n)} for t, i, n in RECIPES]
training_rows, validation_rows, test_row = recipe_rows[0:10], recipe_rows[10:14], recipe_rows[14]

system_message = ("You are a helpful recipe assistant. You are to extract the generic ingredients from each of the "
                  "recipes provided.")


def create_user_message(row):
    return f"""Title: {row['title']}\n\nIngredients: {row['ingredients']}\n\nGeneric ingredients: """


def prepare_example_conversation(row):
    messages = []
    messages.append({"role": "system", "content": system_message})

    user_message = create_user_message(row)
    messages.append({"role": "user", "content": user_message})

    messages.append({"role": "assistant", "content": row["NER"]})

    return {"messages": messages}


def test_messages_for(row):
    return [{"role": "system", "content": system_message}, {"role": "user", "content": create_user_message(row)}]


def write_jsonl(data_list: list, filename: str) -> None:
    with open(filename, "w") as out:
        for ddict in data_list:
            jout = json.dumps(ddict) + "\n"
            out.write(jout)


def print_new_events(client, job_id, seen: set) -> None:
    """Events are listed newest first: page back to the first one already printed, print the rest oldest first."""
    new = []
    for event in client.fine_tuning.jobs.list_events(job_id, limit=20):  # iterating fetches further pages
        if event.id in seen:
            break
        new.append(event)
    for event in reversed(new):
        seen.add(event.id)
        print(f"  [{event.level}] {event.message}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", default=os.environ.get("QLORA_KIT_PORT", "8765"),
                        help="the server's port (default $QLORA_KIT_PORT, else 8765)")
    parser.add_argument("--token", default=os.environ.get("QLORA_KIT_TOKEN", "no-token"),
                        help="its bearer token (default $QLORA_KIT_TOKEN; any value when it has none)")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between status checks (default 2)")
    args = parser.parse_args()

    client = OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key=args.token)

    # --- Data preparation ------------------------------------------------------------------------------------
    pprint(prepare_example_conversation(recipe_rows[0]))
    training_data = [prepare_example_conversation(row) for row in training_rows]
    validation_data = [prepare_example_conversation(row) for row in validation_rows]

    training_file_name = "tmp_recipe_finetune_training.jsonl"
    write_jsonl(training_data, training_file_name)
    validation_file_name = "tmp_recipe_finetune_validation.jsonl"
    write_jsonl(validation_data, validation_file_name)

    # --- Upload files ----------------------------------------------------------------------------------------
    with open(training_file_name, "rb") as training_fd:
        training_response = client.files.create(file=training_fd, purpose="fine-tune")
    training_file_id = training_response.id

    with open(validation_file_name, "rb") as validation_fd:
        validation_response = client.files.create(file=validation_fd, purpose="fine-tune")
    validation_file_id = validation_response.id

    print("Training file ID:", training_file_id, f"({training_response.status})")
    print("Validation file ID:", validation_file_id, f"({validation_response.status})")

    # --- Fine-tuning -----------------------------------------------------------------------------------------
    response = client.fine_tuning.jobs.create(
        training_file=training_file_id,
        validation_file=validation_file_id,
        model=MODEL,
        suffix="recipe-ner",
    )
    job_id = response.id
    print("Job ID:", response.id)
    print("Status:", response.status, flush=True)

    # Check job status: the notebook reruns a cell until the job is done; this polls and prints new events.
    seen: set[str] = set()
    status = None
    while True:
        response = client.fine_tuning.jobs.retrieve(job_id)
        if response.status != status:
            status = response.status
            print("Status:", status, flush=True)
        print_new_events(client, job_id, seen)  # after the retrieve: a final status's last events are printed
        if status in FINAL:
            break
        time.sleep(args.poll)

    print("Job ID:", response.id)
    print("Status:", response.status)
    print("Trained Tokens:", response.trained_tokens)
    if response.status != "succeeded":
        print("Error:", response.error, file=sys.stderr)
        return 1

    fine_tuned_model_id = response.fine_tuned_model
    if fine_tuned_model_id is None:
        raise RuntimeError("Fine-tuned model ID not found. Your job has likely not been completed yet.")
    print("Fine-tuned model ID:", fine_tuned_model_id)

    for checkpoint in client.fine_tuning.jobs.checkpoints.list(job_id):
        print(f"Checkpoint: step {checkpoint.step_number}, train loss {checkpoint.metrics.train_loss:.4f}: "
              f"{checkpoint.fine_tuned_model_checkpoint}")

    results_file_name = "tmp_recipe_finetune_results.csv"
    client.files.content(response.result_files[0]).write_to_file(results_file_name)
    with open(results_file_name) as results:
        lines = results.read().splitlines()
    print(f"Results ({results_file_name}, {len(lines) - 1} steps):")
    for line in lines[:1] + lines[-3:]:
        print("  " + line)

    # --- Inference -------------------------------------------------------------------------------------------
    test_messages = test_messages_for(test_row)
    pprint(test_messages)

    response = client.chat.completions.create(
        model=fine_tuned_model_id, messages=test_messages, temperature=0, max_tokens=500
    )
    print("Answer:", response.choices[0].message.content)

    stream = client.chat.completions.create(
        model=fine_tuned_model_id, messages=test_messages, temperature=0, max_tokens=500, stream=True
    )
    print("Streamed:", end=" ", flush=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
