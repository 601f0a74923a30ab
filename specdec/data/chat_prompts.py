"""The built-in chat prompt set (`--prompts builtin:chat`): short user requests, a few per category,
written for specdec (no dataset license to carry). It is the default benchmark set of the chat pairs
(specdec/models/pairs.py): the prompt loader wraps each in the tokenizer's chat template.

The categories follow the kinds of request Spec-Bench covers (its question.jsonl loads with
`--prompts FILE`); none of these prompts is taken from it. Drafts trained for a pair must not train
on these prompts: they are evaluation prompts.
"""
from __future__ import annotations

CHAT_PROMPTS: dict[str, tuple[str, ...]] = {
    "writing": (
        "Write a short story, about 150 words, about a lighthouse keeper who finds a message in a bottle.",
        "Write a friendly email to a neighbour asking them to water your plants while you are away for a week.",
        "Write a four-line poem about the first snow of winter.",
    ),
    "roleplay": (
        "You are a tour guide in Rome. Welcome a group of tourists and tell them what they will see today.",
        "Pretend you are a pirate captain and give a speech to your crew before a storm.",
        "Act as a job interviewer for a bakery and ask me your first three questions.",
    ),
    "reasoning": (
        "Tom is taller than Anna, and Anna is taller than Ben. Who is the shortest? Explain your answer.",
        "If all cats like milk and Tiger is a cat, what can we say about Tiger? Explain step by step.",
        "A farmer has 3 fields. Each field has 4 rows of 5 apple trees. How many apple trees does he have? "
        "Show your reasoning.",
    ),
    "math": (
        "What is 15% of 240? Show the calculation.",
        "Solve for x: 3x + 7 = 22.",
        "A rectangle is 8 cm long and 5 cm wide. What are its area and its perimeter?",
    ),
    "coding": (
        "Write a Python function that returns the largest number in a list.",
        "Explain what a for loop does in Python and give a short example.",
        "Write a Python function that checks whether a string is a palindrome.",
    ),
    "extraction": (
        "Extract the names and ages from this text as a list: Maria is 34 and works as a nurse. Her brother "
        "Paul, 29, is a teacher. Their father John turned 61 last May.",
        "List the cities mentioned in this sentence: We flew from Paris to Madrid, then took a train to Lisbon "
        "before driving back through Seville.",
        "From this receipt, give the total price: bread 2.50, milk 1.20, cheese 4.80, apples 3.00.",
    ),
    "science": (
        "Why is the sky blue? Explain it simply.",
        "What is photosynthesis and why is it important for life on Earth?",
        "Explain the difference between weather and climate.",
    ),
    "humanities": (
        "What were the main causes of the French Revolution? Answer in a few sentences.",
        "Why do people study history? Give three reasons.",
        "Explain what democracy means to a ten-year-old.",
    ),
    "summarization": (
        "Summarize in one sentence: The town council met on Monday to discuss the new park. Residents asked "
        "for more benches and a playground. The council agreed to build the playground first, because it "
        "was the most requested, and to add benches next year if the budget allows.",
        "Summarize this in two sentences: Regular exercise improves heart health, helps control weight and "
        "lifts mood. Experts recommend at least 150 minutes of moderate activity a week, such as brisk "
        "walking or cycling. Even short walks during the day bring benefits.",
        "Give a short summary: The library will close for renovation from June to August. During this time, "
        "books can be returned at the town hall, and a small mobile library will visit each neighbourhood "
        "once a week.",
    ),
    "translation": (
        "Translate into French: Good morning, how are you today?",
        "Translate into Spanish: The train leaves at eight o'clock tomorrow morning.",
        "Translate into German: I would like a cup of coffee, please.",
    ),
    "qa": (
        "What is the capital of Australia?",
        "How many legs does a spider have?",
        "Who wrote the play Romeo and Juliet?",
    ),
}
